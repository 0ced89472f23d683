-- The delivery engine: held copies, the TLS level and the remote host of each
-- attempt, the final status code, and reports to the administrator.

CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY,
    post_id         INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
    member_id       INTEGER REFERENCES members(id) ON DELETE SET NULL,
    recipient       TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'held', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,
    lease_owner     TEXT,
    lease_until     REAL,
    last_attempt_at REAL,
    last_reply      TEXT    NOT NULL DEFAULT '',
    remote_mta      TEXT    NOT NULL DEFAULT '',   -- host that gave last_reply
    tls             TEXT    NOT NULL DEFAULT '',   -- none, encrypted (unverified), verified
    status          TEXT    NOT NULL DEFAULT '',   -- RFC 3463 code once sent or failed
    UNIQUE (post_id, recipient)
);
INSERT INTO deliveries_new (id, post_id, member_id, recipient, state, attempts, created_at,
                            next_attempt_at, lease_owner, lease_until, last_attempt_at, last_reply)
     SELECT id, post_id, member_id, recipient, state, attempts, created_at,
            next_attempt_at, lease_owner, lease_until, last_attempt_at, last_reply
       FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX deliveries_post ON deliveries(post_id, state);

-- 'list': a post to a list; 'report': a delivery report lmtpd itself sends.
ALTER TABLE posts ADD COLUMN kind TEXT NOT NULL DEFAULT 'list' CHECK (kind IN ('list', 'report'));
ALTER TABLE posts ADD COLUMN reported_at REAL;  -- failure report queued
ALTER TABLE posts ADD COLUMN warned_at REAL;    -- delay warning queued
