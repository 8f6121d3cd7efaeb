-- Impressions and applies per job, with its category: what `estimate` shrinks.
SELECT item_id, category, trials, successes
FROM item_counts
