-- Moderation: who may post to a list and what happens otherwise, and the posts
-- held for a moderator (or for the author's confirmation) until someone decides.

ALTER TABLE lists ADD COLUMN posting TEXT NOT NULL DEFAULT 'members'
    CHECK (posting IN ('members', 'moderated', 'announce'));
ALTER TABLE lists ADD COLUMN unauthenticated TEXT NOT NULL DEFAULT 'refuse'
    CHECK (unauthenticated IN ('refuse', 'confirm', 'hold'));
ALTER TABLE lists ADD COLUMN moderators TEXT NOT NULL DEFAULT '';  -- addresses, space-separated; '': the admin

-- A member's posting rights (lmtpd members set --posting denied); pausing delivery
-- reuses delivery_disabled_at, with its own reason.
ALTER TABLE members ADD COLUMN may_post INTEGER NOT NULL DEFAULT 1 CHECK (may_post IN (0, 1));

-- One row per post held for one list: the bytes as they came and the copies' header
-- block as built on arrival, so a release sends what would have been sent then.
CREATE TABLE held (
    id          INTEGER PRIMARY KEY,
    token       TEXT    NOT NULL UNIQUE,                -- in <list>-moderate+<token>@domain
    queue_id    TEXT    NOT NULL,                       -- the message's, as in the logs
    list_id     INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    list_name   TEXT    NOT NULL,
    member_id   INTEGER REFERENCES members(id) ON DELETE SET NULL,
    mail_from   TEXT    NOT NULL,
    author      TEXT    NOT NULL,
    subject     TEXT    NOT NULL DEFAULT '',
    raw         BLOB    NOT NULL,
    headers     BLOB,                                   -- the copies' header block
    auth        TEXT    NOT NULL DEFAULT '',
    reason      TEXT    NOT NULL,                       -- why it was held, for the moderator
    state       TEXT    NOT NULL
                CHECK (state IN ('confirm', 'held', 'approved', 'rejected', 'expired')),
    held_at     REAL    NOT NULL,
    notified_at REAL,                                   -- moderators' notification queued
    decided_at  REAL,
    decided_by  TEXT    NOT NULL DEFAULT '',
    note        TEXT    NOT NULL DEFAULT '',            -- a rejection's reason
    UNIQUE (queue_id, list_id)
);
CREATE INDEX held_state ON held(state, held_at);
