-- Operations: retention finds old posts by age through an index, so pruning a batch
-- never scans the history it is trimming.

CREATE INDEX posts_accepted ON posts(accepted_at);
