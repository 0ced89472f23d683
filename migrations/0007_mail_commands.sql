-- Mail commands: what members may do by mail, pauses, confirmations, the command log;
-- and forwards and command replies as post kinds of their own.
-- Rebuilding posts needs foreign keys off (the runner sees to it): dropping the old
-- table would otherwise delete every copy (deliveries.post_id ON DELETE CASCADE).

CREATE TABLE posts_new (
    id           INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    list_id      INTEGER REFERENCES lists(id) ON DELETE SET NULL,
    list_name    TEXT    NOT NULL,
    member_id    INTEGER REFERENCES members(id) ON DELETE SET NULL,
    sender       TEXT    NOT NULL,
    accepted_at  REAL    NOT NULL,
    -- list: a member's post; report: lmtpd's report to the administrator; forward: mail
    -- to -owner (or -request that is no command) passed on; reply: an answer to a command
    kind         TEXT    NOT NULL DEFAULT 'list' CHECK (kind IN ('list', 'report', 'forward', 'reply')),
    reported_at  REAL,
    warned_at    REAL,
    headers      BLOB,
    dropped      TEXT    NOT NULL DEFAULT ''
);
INSERT INTO posts_new (id, message_id, list_id, list_name, member_id, sender, accepted_at, kind,
                       reported_at, warned_at, headers, dropped)
     SELECT id, message_id, list_id, list_name, member_id, sender, accepted_at,
            CASE WHEN kind = 'report' AND headers IS NULL AND EXISTS (
                 SELECT 1 FROM messages m WHERE m.id = posts.message_id
                    AND substr(CAST(m.raw AS TEXT), 1, 22) = 'X-Lmtpd-Forwarded-For:')
                 THEN 'forward' ELSE kind END,
            reported_at, warned_at, headers, dropped
       FROM posts;
DROP TABLE posts;
ALTER TABLE posts_new RENAME TO posts;
CREATE INDEX posts_message ON posts(message_id);

-- What members may do by mail, per list.
ALTER TABLE lists ADD COLUMN self_join INTEGER NOT NULL DEFAULT 0 CHECK (self_join IN (0, 1));
ALTER TABLE lists ADD COLUMN roster TEXT NOT NULL DEFAULT 'admin' CHECK (roster IN ('members', 'admin', 'nobody'));

-- A member's pause (vacation): no copies from paused_at on, until paused_until if set.
ALTER TABLE members ADD COLUMN paused_at REAL;
ALTER TABLE members ADD COLUMN paused_until REAL;

-- Changes asked for by mail that the author did not prove: carried out once, on reply.
CREATE TABLE confirmations (
    token       TEXT    PRIMARY KEY,
    address     TEXT    NOT NULL COLLATE NOCASE,   -- the member who must confirm
    command     TEXT    NOT NULL,                  -- e.g. "leave youth"
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    used_at     REAL
) WITHOUT ROWID;

-- Every command mail and what it changed.
CREATE TABLE command_log (
    id          INTEGER PRIMARY KEY,
    at          REAL    NOT NULL,
    queue_id    TEXT    NOT NULL,
    address     TEXT    NOT NULL COLLATE NOCASE,   -- the author (From), or the confirming member
    recipient   TEXT    NOT NULL,                  -- the command address it was sent to
    command     TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    replied     INTEGER NOT NULL DEFAULT 0          -- an answer was queued for this mail
);
CREATE INDEX command_log_address ON command_log(address, at);
