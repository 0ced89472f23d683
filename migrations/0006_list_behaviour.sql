-- What copies look like per list, the copies' header block per post, and posts that
-- were accepted but not sent (loops, automatic replies).

ALTER TABLE lists ADD COLUMN subject_prefix TEXT;                     -- NULL: "[name]"; '': none
ALTER TABLE lists ADD COLUMN reply_to TEXT NOT NULL DEFAULT 'poster'; -- poster, list, or an address
ALTER TABLE lists ADD COLUMN dmarc_mitigation TEXT NOT NULL DEFAULT 'auto'
    CHECK (dmarc_mitigation IN ('auto', 'always', 'never'));
ALTER TABLE lists ADD COLUMN archive_url TEXT NOT NULL DEFAULT '';

ALTER TABLE posts ADD COLUMN headers BLOB;                            -- the copies' header block
ALTER TABLE posts ADD COLUMN dropped TEXT NOT NULL DEFAULT '';        -- why it was not sent
-- the list headers alone, which posts.headers replaces
ALTER TABLE posts DROP COLUMN list_headers;
