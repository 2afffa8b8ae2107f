-- Layer 5: the backtest. Every model, and two baselines, scored against the liquidations that
-- really happened, per symbol and side. False positives count: precision is the share of the
-- volume a model said was liquidated that matched a realized liquidation.

-- Realized liquidations, one row per event (or per period and side for aggregated exports).
CREATE OR REPLACE TABLE realized_liquidations AS
SELECT symbol, ts, side, price, volume_usd, source FROM stg_realized_liquidations ORDER BY symbol, ts;

-- The heatmap's time buckets that realized data covers, per symbol: only there can a model be wrong.
CREATE OR REPLACE TABLE backtest_periods AS
SELECT g.symbol, g.start_ts AS ts, g.end_ts
FROM time_grid g JOIN (SELECT symbol, min(ts) AS first_ts, max(ts) AS last_ts FROM realized_liquidations GROUP BY 1) r
    ON g.symbol = r.symbol AND g.end_ts > r.first_ts AND g.start_ts <= r.last_ts;

-- Predictions per time bucket and side: the models', and the baselines'.
--   naive_move: open interest x the adverse price move within the bucket (longs lose on the drop
--               from the open to the low, shorts on the rise to the high): no positions, no levels.
--   shuffled:   the ensemble's predictions moved by whole days (half the span, wrapping round), so the
--               time of day and the totals stay and only the timing is wrong: it should score near zero.
CREATE OR REPLACE TABLE backtest_predictions AS
WITH span AS (
    SELECT symbol, min(ts) AS first_ts, epoch(max(end_ts) - min(ts))::BIGINT AS span_s FROM backtest_periods GROUP BY 1
),
moves AS (
    SELECT p.symbol, p.ts, arg_min(k.open, k.ts) AS open, min(k.low) AS low, max(k.high) AS high
    FROM backtest_periods p JOIN stg_price_klines k ON k.symbol = p.symbol AND k.ts >= p.ts AND k.ts < p.end_ts
    GROUP BY ALL
),
naive AS (
    SELECT 'naive_move' AS model, m.symbol, m.ts, s.side,
           o.open_interest_usd * CASE s.side WHEN 'long' THEN greatest(0, 1 - m.low / m.open)
                                             ELSE greatest(0, m.high / m.open - 1) END AS volume_usd
    FROM moves m ASOF JOIN stg_open_interest o ON m.symbol = o.symbol AND m.ts >= o.ts
    CROSS JOIN (VALUES ('long'), ('short')) s(side)
)
SELECT model, symbol, ts, side, volume_usd FROM predicted_liquidations
UNION ALL SELECT * FROM naive
UNION ALL
SELECT 'shuffled', p.symbol,
       s.first_ts + to_seconds((epoch(p.ts - s.first_ts)::BIGINT
                                + 86400 * greatest(1, s.span_s // 86400 // 2)) % greatest(s.span_s, 1)),
       p.side, p.volume_usd
FROM predicted_liquidations p JOIN span s USING (symbol)
WHERE p.model = 'ensemble' AND p.ts >= s.first_ts AND p.ts < s.first_ts + to_seconds(s.span_s);

-- Predicted next to realized volume in every covered time bucket, zeros included.
CREATE OR REPLACE TABLE backtest_series AS
WITH models AS (   -- every model with positions, even one that never predicted a liquidation
    SELECT DISTINCT model, symbol FROM positions UNION SELECT DISTINCT model, symbol FROM backtest_predictions
),
predicted AS (SELECT model, symbol, ts, side, sum(volume_usd) AS usd FROM backtest_predictions GROUP BY ALL),
realized AS (      -- each realized liquidation in its time bucket, summed once for all models
    SELECT r.symbol, p.ts, r.side, sum(r.volume_usd) AS usd
    FROM realized_liquidations r ASOF JOIN backtest_periods p ON r.symbol = p.symbol AND r.ts >= p.ts
    WHERE r.ts < p.end_ts GROUP BY ALL
)
SELECT m.model, p.symbol, p.ts, s.side, coalesce(pr.usd, 0) AS predicted_usd, coalesce(re.usd, 0) AS realized_usd
FROM backtest_periods p JOIN models m USING (symbol) CROSS JOIN (VALUES ('long'), ('short')) s(side)
LEFT JOIN predicted pr ON pr.model = m.model AND pr.symbol = p.symbol AND pr.ts = p.ts AND pr.side = s.side
LEFT JOIN realized re ON re.symbol = p.symbol AND re.ts = p.ts AND re.side = s.side
ORDER BY m.model, p.symbol, p.ts, s.side;

-- The scores. n_periods is the number of time buckets (or realized events, or consumed levels)
-- each score rests on.
CREATE OR REPLACE TABLE backtest_scores AS
WITH by_period AS (   -- the heatmap's resolution, and whole hours when that is finer
    SELECT model, symbol, side, duration_text(param('time_bucket_s')::BIGINT) AS period, ts,
           predicted_usd AS p, realized_usd AS r
    FROM backtest_series
    UNION ALL
    SELECT model, symbol, side, '1 h', time_bucket(INTERVAL 1 HOUR, ts), sum(predicted_usd), sum(realized_usd)
    FROM backtest_series WHERE param('time_bucket_s') < 3600 AND 3600 % param('time_bucket_s') = 0
    GROUP BY ALL
),
ranked AS (           -- Spearman: Pearson on ranks, ties given their average rank
    SELECT *, (rank() OVER wp + cume_dist() OVER wp * count(*) OVER w) / 2 AS p_rank,
              (rank() OVER wr + cume_dist() OVER wr * count(*) OVER w) / 2 AS r_rank
    FROM by_period
    WINDOW w AS (PARTITION BY model, symbol, side, period),
           wp AS (PARTITION BY model, symbol, side, period ORDER BY p),
           wr AS (PARTITION BY model, symbol, side, period ORDER BY r)
),
correlations AS (
    SELECT model, symbol, side, 'pearson_' || replace(period, ' ', '') AS metric, corr(p, r) AS value, count(*) AS n
    FROM ranked GROUP BY ALL
    UNION ALL
    SELECT model, symbol, side, 'spearman_' || replace(period, ' ', ''), corr(p_rank, r_rank), count(*)
    FROM ranked GROUP BY ALL
),
calibration AS (      -- predicted total / realized total over the covered time
    SELECT model, symbol, side, 'calibration', sum(predicted_usd) / nullif(sum(realized_usd), 0), count(*)
    FROM backtest_series GROUP BY ALL
),
bucket AS (SELECT param('price_bucket_usd') AS usd, param('backtest_price_tolerance_buckets') AS tolerance),
densest AS (          -- each model's densest alive buckets per side at the end of every time bucket
    SELECT model, symbol, ts + to_seconds(param('time_bucket_s')::BIGINT) AS as_of, side, price_bucket
    FROM (
        SELECT h.model, h.symbol, h.ts, s.side, h.price_bucket,
               row_number() OVER (PARTITION BY h.model, h.symbol, h.ts, s.side
                                  ORDER BY CASE s.side WHEN 'long' THEN h.long_usd ELSE h.short_usd END DESC) AS rank
        FROM heatmap h CROSS JOIN (VALUES ('long'), ('short')) s(side)
        WHERE CASE s.side WHEN 'long' THEN h.long_usd ELSE h.short_usd END > 0
    ) WHERE rank <= param('backtest_top_buckets')
),
events AS (           -- realized liquidations with a price, and the time bucket they fell in
    SELECT r.*, p.ts AS period_ts, floor(r.price / (SELECT usd FROM bucket)) * (SELECT usd FROM bucket) AS price_bucket
    FROM realized_liquidations r ASOF JOIN backtest_periods p ON r.symbol = p.symbol AND r.ts >= p.ts
    WHERE r.price IS NOT NULL
),
recall AS (           -- share of realized volume that fell where the model had one of its densest levels
    SELECT m.model, e.symbol, e.side, 'recall_top' || param('backtest_top_buckets')::INTEGER,
           coalesce(sum(e.volume_usd) FILTER (EXISTS (
               SELECT 1 FROM densest d WHERE d.model = m.model AND d.symbol = e.symbol AND d.side = e.side
               AND d.as_of = e.period_ts
               AND abs(d.price_bucket - e.price_bucket) <= (SELECT tolerance * usd FROM bucket))), 0)
           / sum(e.volume_usd), count(*)
    FROM events e JOIN (SELECT DISTINCT model, symbol FROM positions) m USING (symbol)
    GROUP BY ALL
),
consumed AS (         -- what each model said was liquidated, where and when, in the covered time
    SELECT g.model, g.symbol, g.consumed_end_ts - to_seconds(param('time_bucket_s')::BIGINT) AS period_ts, g.side,
           g.price_bucket, sum(g.consumed_volume_usd) AS volume_usd
    FROM position_grid g JOIN backtest_periods p
        ON g.symbol = p.symbol AND g.consumed_end_ts = p.end_ts
    GROUP BY ALL
),
precision_ AS (       -- share of that volume matched by a realized liquidation: false positives count
    SELECT c.model, c.symbol, c.side, 'precision',
           coalesce(sum(c.volume_usd) FILTER (EXISTS (
               SELECT 1 FROM events e WHERE e.symbol = c.symbol AND e.side = c.side AND e.period_ts = c.period_ts
               AND abs(e.price_bucket - c.price_bucket) <= (SELECT tolerance * usd FROM bucket))), 0)
           / sum(c.volume_usd), count(*)
    FROM consumed c
    WHERE c.symbol IN (SELECT symbol FROM events)
    GROUP BY ALL
)
SELECT model, symbol, side, metric,
       CASE WHEN NOT isnan(value) THEN value END AS value,  -- no variance, nothing realized: no score
       n AS n_periods
FROM (SELECT * FROM correlations UNION ALL SELECT * FROM calibration UNION ALL SELECT * FROM recall
      UNION ALL SELECT * FROM precision_)
ORDER BY symbol, side, metric, model;
