-- Members, lists, accepted posts and the outbound queue.
-- Times are Unix seconds (REAL); addresses are stored with a lower-case domain.

CREATE TABLE members (
    id          INTEGER PRIMARY KEY,
    address     TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- mailboxes differing only in case are one
    name        TEXT    NOT NULL DEFAULT '',
    active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at  REAL    NOT NULL
);

CREATE TABLE lists (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    description   TEXT    NOT NULL DEFAULT '',
    posters       TEXT    NOT NULL DEFAULT 'club' CHECK (posters IN ('club', 'list')),
    posts_per_day INTEGER CHECK (posts_per_day IS NULL OR posts_per_day >= 0),
    created_at    REAL    NOT NULL
);

CREATE TABLE memberships (
    list_id    INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    member_id  INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    PRIMARY KEY (list_id, member_id)
) WITHOUT ROWID;
CREATE INDEX memberships_member ON memberships(member_id);

-- One row per accepted LMTP transaction: the raw bytes exactly as received.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    queue_id    TEXT    NOT NULL UNIQUE,
    mail_from   TEXT    NOT NULL,
    author      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL DEFAULT '',
    subject     TEXT    NOT NULL DEFAULT '',
    size        INTEGER NOT NULL,
    raw         BLOB    NOT NULL,
    arrived_at  REAL    NOT NULL
);

-- One row per list a message was accepted for: the audit of what was posted, and
-- a snapshot of what every copy carries (envelope sender, list header lines).
CREATE TABLE posts (
    id           INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    list_id      INTEGER REFERENCES lists(id) ON DELETE SET NULL,
    list_name    TEXT    NOT NULL,
    member_id    INTEGER REFERENCES members(id) ON DELETE SET NULL,
    sender       TEXT    NOT NULL,
    list_headers TEXT    NOT NULL,
    accepted_at  REAL    NOT NULL
);
CREATE INDEX posts_message ON posts(message_id);

-- The outbound queue: one row per post and member.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    post_id         INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
    member_id       INTEGER REFERENCES members(id) ON DELETE SET NULL,
    recipient       TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,
    lease_owner     TEXT,
    lease_until     REAL,
    last_attempt_at REAL,
    last_reply      TEXT    NOT NULL DEFAULT '',
    UNIQUE (post_id, recipient)
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);

-- Posts counted per member, list and local calendar day, for the daily limit.
CREATE TABLE quota_use (
    member_id  INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    list_id    INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    day        TEXT    NOT NULL,
    posts      INTEGER NOT NULL,
    PRIMARY KEY (member_id, list_id, day)
) WITHOUT ROWID;
