-- Interactions to learn from. `$min_value` is bound from the step's params.
SELECT user_id, item_id, value, ts
FROM interactions
WHERE value >= $min_value
