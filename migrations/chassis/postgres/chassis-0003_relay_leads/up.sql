-- One relay publishes a database's outbox at a time (on PostgreSQL the one whose session
-- holds the outbox's advisory lock), and it knows the rows it is publishing in memory:
-- claiming a row no longer writes it, so the claim's lease columns go.
ALTER TABLE outbox DROP COLUMN lease_owner;
ALTER TABLE outbox DROP COLUMN lease_until;
