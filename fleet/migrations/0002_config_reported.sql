-- depends: 0001_initial
-- The latest `config/reported` of each unit: did it apply the fleet's `config/desired`, and if not, why.
-- Plain ALTER TABLE ... ADD COLUMN, one column a statement, as both SQLite and PostgreSQL accept it.
ALTER TABLE units ADD COLUMN config_applied INTEGER;             -- the report's `ok`, 0/1
ALTER TABLE units ADD COLUMN config_version BIGINT;              -- desired version it answers; NULL for set_config
ALTER TABLE units ADD COLUMN config_detail TEXT;                 -- `applied`, or the refusal reason
ALTER TABLE units ADD COLUMN config_reported TEXT;               -- the fragment the unit runs (JSON), NULL if none
ALTER TABLE units ADD COLUMN config_ts DOUBLE PRECISION;         -- device clock of the report (orders reports)
ALTER TABLE units ADD COLUMN config_received_at DOUBLE PRECISION; -- server clock
