/*-------------------------------------------------------------------------
 *
 * fuzz_azure_json.c
 *		libFuzzer target for the Azure Key Vault provider's response
 *		parsers (src/keys/provider_azure_json.c): key bundles, wrap/unwrap
 *		results, error bodies, token responses, key URLs and the sanitisers.
 *
 * The first input byte picks the parser, the rest is the body.  Besides
 * the sanitisers' crash/leak/UB detection, every output is checked against
 * the parsers' promises: NUL-terminated inside its field, sanitised text is
 * printable ASCII, a parsed URL is well-formed, an RSA size is bounded.  A
 * broken promise aborts, which libFuzzer reports as a crash.
 *
 * Built by fuzz/Makefile with clang -fsanitize=fuzzer,address,undefined
 * against the parser source itself, not a copy; never linked into the
 * server.
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys/provider_azure_json.h"

#define CHECK(cond) \
	do { if (!(cond)) { fprintf(stderr, "broken promise: %s (line %d)\n", #cond, __LINE__); abort(); } } while (0)

static void
check_field(const char *s, size_t size)
{
	CHECK(memchr(s, '\0', size) != NULL);
}

static void
check_printable(const char *s, size_t size)
{
	check_field(s, size);
	for (const char *p = s; *p; p++)
		CHECK(*p >= 0x20 && *p <= 0x7e);
}

static void
check_code(const char *s, size_t size)
{
	check_field(s, size);
	for (const char *p = s; *p; p++)
		CHECK(isalnum((unsigned char) *p) || *p == '_' || *p == '-' || *p == '.');
}

static void
check_ref(const AzureKeyRef *ref)
{
	check_field(ref->host, sizeof(ref->host));
	check_field(ref->name, sizeof(ref->name));
	check_field(ref->version, sizeof(ref->version));
	CHECK(ref->host[0] != '\0' && ref->name[0] != '\0');
	CHECK(ref->port >= 1 && ref->port <= 65535);
	for (const char *p = ref->host; *p; p++)
		CHECK(islower((unsigned char) *p) || isdigit((unsigned char) *p) || *p == '.' || *p == '-');
	for (const char *p = ref->name; *p; p++)
		CHECK(isalnum((unsigned char) *p) || *p == '-');
	for (const char *p = ref->version; *p; p++)
		CHECK(isalnum((unsigned char) *p));
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body;
	size_t		len;
	const char *why = NULL;

	if (size < 1)
		return 0;
	body = (const char *) data + 1;
	len = size - 1;

	switch (data[0] % 6)
	{
		case 0:
			{
				AzureKeyBundle kb;

				if (azj_parse_key_bundle(body, len, &kb, &why))
				{
					CHECK(why == NULL);
					check_field(kb.kid, sizeof(kb.kid));
					check_ref(&kb.ref);
					CHECK(kb.ref.version[0] != '\0');
					check_code(kb.kty, sizeof(kb.kty));
					check_code(kb.recovery_level, sizeof(kb.recovery_level));
					CHECK(kb.bits >= 0 && kb.bits <= 8 * (AZJ_MAX_RSA_BYTES + 1));
				}
				else
					CHECK(why != NULL);
				break;
			}
		case 1:
			{
				char		kid[512];
				uint8_t		value[AZJ_MAX_RSA_BYTES];
				uint8_t		small[32];
				size_t		vlen = 12345;

				if (azj_parse_key_result(body, len, kid, sizeof(kid), value, sizeof(value), &vlen, &why))
				{
					check_field(kid, sizeof(kid));
					CHECK(vlen <= sizeof(value));
				}
				else
					CHECK(vlen == 0 && why != NULL);
				/* a DEK-sized buffer must never overflow */
				if (azj_parse_key_result(body, len, kid, 8, small, sizeof(small), &vlen, &why))
					CHECK(vlen <= sizeof(small) && strlen(kid) < 8);
				break;
			}
		case 2:
			{
				AzureServiceError se;

				if (azj_parse_error(body, len, &se))
				{
					check_code(se.code, sizeof(se.code));
					check_code(se.inner, sizeof(se.inner));
					check_printable(se.message, sizeof(se.message));
				}
				break;
			}
		case 3:
			{
				char		token[AZJ_MAX_TOKEN];
				int64_t		exp = -1;

				if (azj_parse_token(body, len, 1700000000, token, sizeof(token), &exp, &why))
				{
					check_field(token, sizeof(token));
					CHECK(token[0] != '\0');
					for (const char *p = token; *p; p++)
						CHECK(*p > 0x20 && *p < 0x7f);
				}
				else
					CHECK(why != NULL && token[0] == '\0');
				break;
			}
		case 4:
			{
				AzureKeyRef ref;
				AzureKeyRef again;

				if (azj_parse_key_url(body, len, &ref) == AZURE_URL_OK)
				{
					char		url[512];

					check_ref(&ref);
					/* what we build from a parsed reference parses the same */
					snprintf(url, sizeof(url), "https://%s:%d/keys/%s%s%s", ref.host, ref.port,
							 ref.name, ref.version[0] ? "/" : "", ref.version);
					CHECK(azj_parse_key_url(url, strlen(url), &again) == AZURE_URL_OK);
					CHECK(azj_same_vault(&ref, &again));
					CHECK(strcmp(ref.name, again.name) == 0 && strcmp(ref.version, again.version) == 0);
				}
				break;
			}
		case 5:
			{
				char		msg[AZJ_MAX_MSG];
				char		tiny[5];
				char		code[AZJ_MAX_CODE];

				azj_sanitize_message(body, len, msg, sizeof(msg));
				check_printable(msg, sizeof(msg));
				azj_sanitize_message(body, len, tiny, sizeof(tiny));
				check_printable(tiny, sizeof(tiny));
				azj_sanitize_code(body, len, code, sizeof(code));
				check_code(code, sizeof(code));
				CHECK(azj_bits_of(data, size) <= (int) (8 * size));
				break;
			}
	}
	return 0;
}
