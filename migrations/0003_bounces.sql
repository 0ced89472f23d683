-- Mail to a list's bounce address (<list>-bounces[+member]@domain), stored raw as it
-- arrived; processing comes later, from cron, never inline.

CREATE TABLE bounces (
    id           INTEGER PRIMARY KEY,
    queue_id     TEXT    NOT NULL,
    list_name    TEXT    NOT NULL,
    recipient    TEXT    NOT NULL,   -- the bounce address it was sent to
    extension    TEXT    NOT NULL DEFAULT '',  -- after "+": the VERP-encoded member
    mail_from    TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    raw          BLOB    NOT NULL,
    arrived_at   REAL    NOT NULL,
    processed_at REAL
);
CREATE INDEX bounces_unprocessed ON bounces(processed_at);
