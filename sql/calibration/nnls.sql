-- The calibration layer's solver (see calibration/observations.sql for what is fitted and why).

-- Non-negative least squares, min |X w - y|^2 + alpha |w - center|^2 with w >= 0, from the Gram matrix
-- g = X'X and b = X'y, by multiplicative updates (Lee & Seung 2001, "Algorithms for non-negative
-- matrix factorization"; with X, y >= 0 every update keeps w >= 0 and lowers the error):
--     w_i <- w_i (b_i + alpha center) / ((g w)_i + alpha w_i)
CREATE OR REPLACE MACRO nnls_step(g, b, w, alpha, center) AS
    list_transform(w, lambda wi, i: coalesce(wi * (b[i] + alpha * center) / nullif(list_dot_product(g[i], w) + alpha * wi, 0), 0));

-- The problems of one stage, from a design table (problem_id, origin_ts, side, cell, j, x, y): one row each
-- with g, b, the start and ridge centre (the least-squares scale of all features weighed 1) and alpha.
CREATE OR REPLACE MACRO nnls_problems(design) AS TABLE
WITH pairs AS (
    SELECT a.problem_id, a.j, b.j AS k, sum(a.x * b.x) AS g
    FROM query_table(design) a JOIN query_table(design) b USING (problem_id, origin_ts, side, cell) GROUP BY ALL
),
rows AS (SELECT problem_id, j, list(g ORDER BY k) AS g_row FROM pairs GROUP BY ALL),
rhs AS (SELECT problem_id, j, sum(x * y) AS b FROM query_table(design) GROUP BY ALL),
problems AS (
    SELECT problem_id, list(g_row ORDER BY j) AS g, list(b ORDER BY j) AS b
    FROM rows JOIN rhs USING (problem_id, j) GROUP BY ALL
)
SELECT problem_id, g, b,
       coalesce(list_sum(b) / nullif(list_sum(list_transform(g, lambda r: list_sum(r))), 0), 0) AS center,
       param('calibration_ridge') * list_sum(list_transform(g, lambda r, i: r[i])) / len(g) AS alpha
FROM problems;

-- Solve them: a fixed number of updates from the centre, then the training error |X w - y|^2 - |y|^2.
-- The updates are a fold over the step numbers (list_reduce), one expression per problem: the same
-- arithmetic as a recursive CTE of one update per step, without its per-step join (identical weights).
CREATE OR REPLACE MACRO nnls(problems) AS TABLE
WITH solve AS (
    SELECT problem_id, g, b,
           list_reduce(range(CASE WHEN alpha > 0 THEN 1000 ELSE 0 END),
                       lambda w, step: nnls_step(g, b, w, alpha, center), list_transform(b, lambda x: center)) AS w
    FROM query_table(problems)
)
SELECT problem_id, w, list_dot_product(w, list_transform(g, lambda r: list_dot_product(r, w))) - 2 * list_dot_product(w, b)
           AS error
FROM solve;
