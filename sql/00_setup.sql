-- cmk_storage extension set-up, key state and crypto self-tests.
CREATE EXTENSION cmk_storage;
SELECT state, reason, provider, wrap_algorithm, memory_locked,
       kek_id ~ '^file:sha256:[0-9a-f]{64}$' AS kek_id_is_fingerprint,
       dek_id ~ '^[0-9a-f]{32}$' AS dek_id_is_hex
  FROM cmk_storage.status;
SELECT * FROM cmk_storage.self_test();
SELECT amname, amtype FROM pg_am WHERE amname = 'cmk_heap';
-- settings
SHOW cmk_storage.wrap_algorithm;
-- key material is never a setting, and key_uri is superuser-only
SELECT name FROM pg_settings WHERE name LIKE 'cmk_storage.%' ORDER BY 1;
