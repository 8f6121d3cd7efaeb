-- One row per time a job was shown: where, on what device, and whether the
-- user applied; with the job's salary and remote flag, whose effects `estimate`
-- fits.
SELECT item_id, ts, converted, position, device, salary, remote
FROM impressions
