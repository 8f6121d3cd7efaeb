-- What a job posting says about itself: its Japanese title, category and
-- prefecture. New postings are here before anyone has clicked them.
SELECT item_id, title_ja, category, prefecture
FROM items
WHERE status = 'open'
