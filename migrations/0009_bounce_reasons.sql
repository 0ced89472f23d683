-- Bounce reasons: why each failure happened (Sisimai's taxonomy), every recipient a report
-- names as failed, and how long a member's mailbox has been full.

ALTER TABLE bounces ADD COLUMN reason TEXT NOT NULL DEFAULT '';      -- bounce_reasons.Reason, '' before
ALTER TABLE bounces ADD COLUMN provider TEXT NOT NULL DEFAULT '';    -- the recipient's mail provider
ALTER TABLE bounces ADD COLUMN format TEXT NOT NULL DEFAULT '';      -- the reader that understood it

CREATE TABLE bounce_failures (
    id          INTEGER PRIMARY KEY,
    bounce_id   INTEGER NOT NULL REFERENCES bounces(id) ON DELETE CASCADE,
    address     TEXT    NOT NULL,
    member_id   INTEGER REFERENCES members(id) ON DELETE SET NULL,
    reason      TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT '',
    diagnostic  TEXT    NOT NULL DEFAULT '',
    permanent   INTEGER NOT NULL DEFAULT 1,
    counted     INTEGER NOT NULL DEFAULT 0    -- raised the member's score
);
CREATE INDEX bounce_failures_bounce ON bounce_failures(bounce_id);
CREATE INDEX bounce_failures_member ON bounce_failures(member_id);

-- a full mailbox scores only once it has stayed full for [bounces] mailboxfull_after_days
CREATE TABLE bounce_mailboxfull (
    member_id INTEGER PRIMARY KEY REFERENCES members(id) ON DELETE CASCADE,
    since     REAL NOT NULL,
    last      REAL NOT NULL
);
