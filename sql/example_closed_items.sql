-- Items nobody should be recommended: the job is no longer open.
SELECT item_id
FROM items
WHERE status = $status
