-- The relay's purge deletes the inbox's handled ids by age, a bounded chunk at a time:
-- without this index each chunk would scan the whole inbox.
CREATE INDEX inbox_handled ON inbox (handled_at);
