-- Trials and applies per arm of the apply-button experiment so far. In
-- production: a GROUP BY over the assignment and conversion logs.
SELECT arm_id, trials, successes
FROM ab_arms
