-- Prompt reports and deliverability alerts (issue 13).
--
-- A failed copy is named in a report to the administrator at the end of the
-- delivery pass that made it final, not once every copy of its post is final:
-- each failed copy remembers when it was reported. posts.reported_at keeps its
-- meaning (every failure of the finished post has been reported), so retention
-- and `queue retry` read it as before.
ALTER TABLE deliveries ADD COLUMN reported_at REAL;
UPDATE deliveries SET reported_at = (SELECT p.reported_at FROM posts p WHERE p.id = deliveries.post_id)
 WHERE state = 'failed';

-- A deliverability alert to the administrator: one per provider (receiving domain
-- or reporting MTA's organisational domain) and day, when many bounces there share
-- a block reason.
CREATE TABLE deliverability_alerts (
    id         INTEGER PRIMARY KEY,
    provider   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    sent_at    REAL    NOT NULL
);
CREATE INDEX deliverability_alerts_provider ON deliverability_alerts(provider, sent_at);

-- ARF complaints are passed on to the administrator once; those already processed
-- before this version are not sent now.
ALTER TABLE bounces ADD COLUMN forwarded_at REAL;
UPDATE bounces SET forwarded_at = processed_at WHERE reason = 'feedback';

-- the alert looks at the last hour's bounces, the forward at complaints not yet sent:
-- neither scans the months of bounces retention keeps
CREATE INDEX bounces_arrived ON bounces(arrived_at);
CREATE INDEX bounces_unforwarded ON bounces(id) WHERE reason = 'feedback' AND forwarded_at IS NULL;
