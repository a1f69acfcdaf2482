-- is_encrypted(), the status view's count, and the raw page holds no plaintext.
CREATE EXTENSION IF NOT EXISTS pageinspect;
CREATE TABLE enc (id int, secret text) USING cmk_heap;
CREATE TABLE plain (id int, secret text) USING heap;
INSERT INTO enc VALUES (1, 'attack at dawn'), (2, NULL), (3, 'retreat at dusk');
INSERT INTO plain SELECT * FROM enc;
SELECT cmk_storage.is_encrypted('enc'), cmk_storage.is_encrypted('plain');
SELECT cmk_storage.is_encrypted(reltoastrelid::regclass) FROM pg_class WHERE relname = 'enc';
SELECT encrypted_relations >= 1 AS counts_enc FROM cmk_storage.status;
-- the heap page of the plain table holds the text, the encrypted one does not
SELECT position('attack at dawn'::bytea IN get_raw_page('plain', 0)) > 0 AS plain_has_text;
SELECT position('attack at dawn'::bytea IN get_raw_page('enc', 0)) > 0 AS enc_has_text;
-- but it decrypts
SELECT * FROM enc ORDER BY id;
-- NULLs stay NULL (the bitmap is in clear), lengths match the plaintext
SELECT lp, t_infomask & 1 AS has_nulls FROM heap_page_items(get_raw_page('enc', 0)) ORDER BY lp;
DROP TABLE enc, plain;
