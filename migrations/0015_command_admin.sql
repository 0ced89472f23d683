-- Mail commands, second round: the administrator's daily summary of what members changed.
-- One row per day summarised: whoever inserts it first (serve's housekeeping or
-- `lmtpd commands summary` from cron) sends the mail, in the same transaction.
CREATE TABLE command_summaries (
    day       TEXT PRIMARY KEY,          -- the local date summarised, YYYY-MM-DD
    sent_at   REAL NOT NULL,
    changes   INTEGER NOT NULL,          -- how many changes it listed (0: nothing was sent)
    queue_id  TEXT                       -- the summary mail's queue id, if one was sent
) WITHOUT ROWID;
