-- shared workload, identical for heap and cmk_heap (run from the repository root)
\set am heap
\i test/sql/workload_toast_insert.sql
