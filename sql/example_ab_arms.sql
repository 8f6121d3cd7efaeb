-- Trials and applies per arm of the apply-button experiment so far: one row
-- per user the assignment API assigned, with whether they applied.
SELECT arm_id, COUNT(*) AS trials, SUM(converted) AS successes
FROM ab_log
GROUP BY arm_id
