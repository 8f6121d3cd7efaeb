-- Items with the columns later steps use: the category caps lists per category.
SELECT item_id, title, category
FROM items
