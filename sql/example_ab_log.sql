-- Each assignment with the probability the API answered it with: what
-- off-policy evaluation weighs rows by (never a recomputed probability).
SELECT arm_id, converted, probability AS propensity
FROM ab_log
