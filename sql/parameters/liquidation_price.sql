-- Parameters layer: Binance's liquidation price (USD-M, isolated margin, one-way mode).
-- A position is liquidated when wallet balance + unrealised PnL = maintenance margin, where the
-- maintenance margin is notional x MMR - cum (cum: the bracket's "maintenance amount"). With
-- quantity Q = notional / EP, entry EP, leverage L and isolated wallet balance Q x EP / L:
--     long : LP = (EP (1 - 1/L) - cum/Q) / (1 - MMR)
--     short: LP = (EP (1 + 1/L) + cum/Q) / (1 + MMR)
-- Check: EP 100,000, L 10, MMR 0.4 %, cum 0 -> long 90,361.45, short 109,561.75.
-- (EP (1 - 1/L) alone, which ignores MMR, gives 90,000: a common mistake in public estimators.)
CREATE OR REPLACE MACRO liquidation_price_in_bracket(side, entry_price, leverage, notional_usd, mmr, cum_usd) AS
    CASE side
        WHEN 'long'  THEN (entry_price * (1 - 1 / leverage) - cum_usd * entry_price / notional_usd) / (1 - mmr)
        WHEN 'short' THEN (entry_price * (1 + 1 / leverage) + cum_usd * entry_price / notional_usd) / (1 + mmr)
    END;

-- The brackets of a symbol; a symbol without rows of its own uses BTCUSDT's (the only table shipped).
CREATE OR REPLACE MACRO brackets_symbol(sym) AS
    CASE WHEN EXISTS (SELECT 1 FROM maintenance_brackets b WHERE b.symbol = sym) THEN sym ELSE 'BTCUSDT' END;

-- The bracket of one position: the first whose notional cap is at or above the position's notional.
CREATE OR REPLACE MACRO maintenance_bracket(notional_usd, sym := 'BTCUSDT') AS TABLE
    SELECT * FROM maintenance_brackets
    WHERE symbol = brackets_symbol(sym) AND notional_usd <= notional_cap_usd
    ORDER BY notional_cap_usd LIMIT 1;

CREATE OR REPLACE MACRO liquidation_price(side, entry_price, leverage, notional_usd, sym := 'BTCUSDT') AS (
    SELECT liquidation_price_in_bracket(side, entry_price, leverage, notional_usd,
                                        maintenance_margin_rate, maintenance_amount_usd)
    FROM maintenance_bracket(notional_usd, sym := sym));

-- Each leverage tier's bracket, per symbol: the models price every tier's positions with it.
CREATE OR REPLACE VIEW tier_brackets AS
SELECT s.symbol, t.leverage, t.weight, t.typical_notional_usd, b.bracket,
       b.maintenance_margin_rate, b.maintenance_amount_usd
FROM (SELECT DISTINCT symbol FROM stg_price_klines) s
CROSS JOIN leverage_tiers t
JOIN LATERAL (SELECT * FROM maintenance_bracket(t.typical_notional_usd, sym := s.symbol)) b ON true;
