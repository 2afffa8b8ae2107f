-- Lifecycle layer: the level lifecycle, shared by every model. A piece (sql/models/pieces.sql) stays alive until
-- consumed (the first trigger bar after it opened whose range crosses its exact liquidation price:
-- those positions are taken as liquidated), fades with age (churn), and shrinks when open interest
-- falls by more than the model's own liquidations explain. Set-based throughout.

-- The scale of alive levels, per model and side. When open interest falls by a share f in a step and
-- the model says a share c of its alive levels on that side was liquidated in the same step, those
-- liquidations already explain c of the fall (a liquidation closes contracts too): only max(0, f - c)
-- was closed by hand, and the levels still alive shrink by that, as a share of what was left
-- (1 - max(0, f - c) / (1 - c)). c is measured on volumes weighed with the gross scale (every fall
-- shrinking everything), a one-pass stand-in for the exact recurrence, which would be sequential.
-- Every contract has a long and a short, so f applies to each side, and c is each side's own.
-- Churn: every alive level also fades at a constant rate, halving in fade_half_life_h whatever open
-- interest does (positions close and others open; the open-interest models reopen the same volume at
-- the current price, oi_steps.churn_usd). aggr.trade's heatmap fades its levels linearly after 100 bars;
-- a constant rate (exponential fade) is the memoryless version, and keeps the scale one product over
-- time. The rate is one for every model and time (fade_half_life_h), the churn's: what fades is what the
-- open-interest models reopen (oi_steps.churn_usd), so their alive volume, and the ensemble's made of
-- their pieces, keeps its ratio to open interest (the ensemble's half-life is not fitted:
-- sql/calibration/ says why). The ensemble's levels are also multiplied by its overall scale
-- (ensemble_scale: phased in from one fit to the next, never stepped; sql/models/ensemble.sql).
-- Persisted: a build computes the steps from rebuild_from() on, carrying in what the last kept step left
-- (log_shrink: the running sum of the shrinks; alive_weighed: of what opened less what was consumed).
CREATE TABLE IF NOT EXISTS level_scale (
    model VARCHAR, symbol VARCHAR, side VARCHAR, ts TIMESTAMP, log_scale DOUBLE, log_shrink DOUBLE, alive_weighed DOUBLE);
DELETE FROM level_scale WHERE ts >= rebuild_from();
INSERT INTO level_scale BY NAME
WITH carried AS (
    SELECT model, symbol, side, max(ts) AS kept_ts, arg_max(log_shrink, ts) AS log_shrink,
           arg_max(alive_weighed, ts) AS alive_weighed
    FROM level_scale GROUP BY ALL
),
kept AS (SELECT symbol, max(kept_ts) AS kept_ts FROM carried GROUP BY symbol),
gross AS (
    SELECT symbol, ts, log_fall_scale - ln(2) * elapsed_s / (3600 * param('fade_half_life_h')) AS log_scale FROM oi_falls
),
recent AS (         -- the levels with an event in the steps recomputed: opened at or after the last kept step, or
                    -- consumed after it (found among the crossings first: a join of every piece to every crossing
                    -- cost more than the rest of this statement)
    SELECT c.* FROM crossings c LEFT JOIN kept k USING (symbol)
    WHERE k.kept_ts IS NULL OR c.created_ts >= k.kept_ts OR c.consumed_ts > k.kept_ts
),
weighed AS (        -- their pieces
    SELECT p.model, p.symbol, p.side, p.created_ts, c.consumed_ts, p.volume_usd / exp(coalesce(g.log_scale, 0)) AS v
    FROM recent c JOIN pieces p USING (symbol, side, created_ts, liquidation_price)
    ASOF LEFT JOIN gross g ON p.symbol = g.symbol AND p.created_ts >= g.ts
),
events AS (        -- openings in the step after the one they opened at the end of (they can only be consumed from
                   -- then on), consumptions in the step (previous_ts, ts] that holds them
    SELECT w.model, w.symbol, w.side, s.ts, w.v AS opened, 0 AS consumed
    FROM weighed w ASOF JOIN oi_falls s ON w.symbol = s.symbol AND w.created_ts < s.ts
    UNION ALL
    SELECT w.model, w.symbol, w.side, s.ts, 0, w.v
    FROM weighed w ASOF JOIN oi_falls s ON w.symbol = s.symbol AND w.consumed_ts <= s.ts
),
steps AS (
    SELECT m.model, m.side, s.symbol, s.ts, s.previous_ts, s.closed_share,
           coalesce(sum(e.opened), 0) AS opened, coalesce(sum(e.consumed), 0) AS consumed
    FROM oi_falls s JOIN (SELECT DISTINCT model, symbol, side FROM pieces) m USING (symbol)
    LEFT JOIN events e USING (model, symbol, side, ts)
    WHERE s.ts >= rebuild_from()
    GROUP BY ALL
),
shares AS (
    -- what could be consumed in a step: alive before it, plus what opened in it
    SELECT s.*, coalesce(c.alive_weighed, 0) + sum(opened - consumed) OVER w AS alive_weighed,
           consumed / nullif(coalesce(c.alive_weighed, 0) + sum(opened - consumed) OVER w + consumed, 0) AS consumed_share,
           coalesce(c.log_shrink, 0) AS carried_shrink
    FROM steps s LEFT JOIN carried c USING (model, symbol, side)
    WINDOW w AS (PARTITION BY s.model, s.symbol, s.side ORDER BY s.ts ROWS UNBOUNDED PRECEDING)
),
shrunk AS (
    SELECT s.*, s.carried_shrink + sum(CASE WHEN s.closed_share > 0 AND coalesce(s.consumed_share, 0) < 1
                THEN ln(greatest(1e-9, 1 - greatest(0, s.closed_share - coalesce(s.consumed_share, 0))
                                           / (1 - coalesce(s.consumed_share, 0))))
                ELSE 0 END
           - ln(2) * epoch(s.ts - s.previous_ts) / (3600 * param('fade_half_life_h')))
           OVER (PARTITION BY s.model, s.symbol, s.side ORDER BY s.ts) AS log_shrink
    FROM shares s
)
SELECT s.model, s.symbol, s.side, s.ts, s.log_shrink, s.alive_weighed,
       s.log_shrink + CASE s.model WHEN 'ensemble' THEN coalesce(e.log_scale, 0) ELSE 0 END AS log_scale
FROM shrunk s ASOF LEFT JOIN ensemble_scale e ON e.symbol = s.symbol AND s.ts >= e.from_ts;

-- Every piece with its fate. scale_free_volume is the volume divided by the shrink at its opening, so
-- that alive(t) = scale_free_volume * exp(log_scale(t)) for a model and side; a consumed piece is
-- valued with the scale before the step that consumed it (its shrink is netted of the consumption).
-- volume_usd is what the piece is worth when it opens: the ensemble's pieces hold its fit's shape, and are
-- worth that times its scale then (ensemble_scale: log_scale - log_shrink; sql/models/ensemble.sql).
-- Persisted: only the pieces whose crossing was looked for in this build (recrossed, sql/models/pieces.sql:
-- the new ones, and those its bars may cross) are valued again; the others' fate and values are kept.
CREATE TABLE IF NOT EXISTS positions (
    model VARCHAR, symbol VARCHAR, created_ts TIMESTAMP, side VARCHAR, leverage INTEGER, entry_price DOUBLE,
    liquidation_price DOUBLE, bucket_index BIGINT, price_bucket DOUBLE, volume_usd DOUBLE, scale_free_volume DOUBLE,
    consumed_bar_ts TIMESTAMP, consumed_ts TIMESTAMP, blown_through BOOLEAN, consumed_volume_usd DOUBLE);
DELETE FROM positions p USING recrossed r
WHERE p.symbol = r.symbol AND p.side = r.side AND p.created_ts = r.created_ts AND p.liquidation_price = r.liquidation_price;
INSERT INTO positions BY NAME
WITH fated AS (     -- (the crossings looked for first, then their pieces: as in level_scale above)
    SELECT p.*, c.consumed_bar_ts, c.consumed_ts, c.blown_through
    FROM (FROM crossings SEMI JOIN recrossed USING (symbol, side, created_ts, liquidation_price)) c
    JOIN pieces p USING (symbol, side, created_ts, liquidation_price)
),
opened AS (
    SELECT f.*, coalesce(s.log_scale, 0) AS created_log_scale, coalesce(s.log_shrink, 0) AS created_log_shrink
    FROM fated f ASOF LEFT JOIN level_scale s
        ON f.model = s.model AND f.symbol = s.symbol AND f.side = s.side AND f.created_ts >= s.ts
)
SELECT o.model, o.symbol, o.created_ts, o.side, o.leverage, o.entry_price, o.liquidation_price,
       floor(o.liquidation_price / param('price_bucket_usd'))::BIGINT AS bucket_index,
       floor(o.liquidation_price / param('price_bucket_usd')) * param('price_bucket_usd') AS price_bucket,
       o.volume_usd * exp(o.created_log_scale - o.created_log_shrink) AS volume_usd,
       o.volume_usd / exp(o.created_log_shrink) AS scale_free_volume,
       o.consumed_bar_ts, o.consumed_ts, o.blown_through,
       CASE WHEN o.consumed_ts IS NOT NULL
            THEN o.volume_usd * exp(coalesce(c.log_scale, 0) - o.created_log_shrink) END AS consumed_volume_usd
FROM opened o ASOF LEFT JOIN level_scale c
    ON o.model = c.model AND o.symbol = c.symbol AND o.side = c.side AND o.consumed_ts > c.ts;
