/*-------------------------------------------------------------------------
 *
 * provider_azure_json.c
 *		Parsers for Azure Key Vault and managed-identity responses, and for
 *		the key URLs and kids in them.
 *
 * This file turns untrusted bytes into fixed-size, validated fields.  It
 * must never: log, allocate with palloc or ereport (it is linked into the
 * fuzz harness and frontend tools), copy raw input into an error string
 * (a malformed token response could otherwise leak part of the token), or
 * leave a secret (token, unwrapped DEK) in memory it frees: jansson's
 * allocator is replaced by one that wipes every block before freeing it,
 * so the lexer's scratch buffers are covered too.
 *
 *-------------------------------------------------------------------------
 */
#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "crypto/cmk_crypto.h"
#include "keys/provider_azure_json.h"

#define MAX_BODY_DEPTH	8		/* innererror nesting we follow */

/*
 * ASCII classes.  <ctype.h> follows the server's LC_CTYPE, where a byte
 * such as 0xE9 can count as a letter; nothing non-ASCII may pass here.
 */
#define AZ_DIGIT(c)	((c) >= '0' && (c) <= '9')
#define AZ_ALNUM(c)	(AZ_DIGIT(c) || ((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define AZ_LOWER(c)	(((c) >= 'A' && (c) <= 'Z') ? (c) + ('a' - 'A') : (c))

static void *
wiping_malloc(size_t size)
{
	return malloc(size);
}

/* Wipe the whole block, not only what jansson used of it. */
static void
wiping_free(void *ptr)
{
	if (ptr == NULL)
		return;
	OPENSSL_cleanse(ptr, malloc_usable_size(ptr));
	free(ptr);
}

void
azj_init(void)
{
	static bool done = false;

	if (!done)
	{
		json_set_alloc_funcs(wiping_malloc, wiping_free);
		done = true;
	}
}

/*
 * Parse a body.  Duplicate keys are refused: two "value" members would make
 * it ambiguous which one we acted on.  jansson's error text quotes the
 * input, so it is never used.
 */
static json_t *
load(const char *body, size_t len)
{
	json_error_t jerr;
	json_t	   *root;

	azj_init();
	if (body == NULL)
		return NULL;
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	OPENSSL_cleanse(&jerr, sizeof(jerr));
	if (root != NULL && !json_is_object(root))
	{
		json_decref(root);
		return NULL;
	}
	return root;
}

/* Overwrite a string member's bytes in the tree before it is freed. */
static void
wipe_string(json_t *s)
{
	if (json_is_string(s))
		OPENSSL_cleanse((char *) json_string_value(s), json_string_length(s));
}

/* ------------------------------------------------------------------------
 * Sanitising
 * ------------------------------------------------------------------------
 */

void
azj_sanitize_message(const char *in, size_t inlen, char *out, size_t outsize)
{
	size_t		o = 0;
	bool		space = false;
	bool		cut = false;

	if (outsize == 0)
		return;
	for (size_t i = 0; i < inlen && in != NULL; i++)
	{
		unsigned char c = (unsigned char) in[i];

		/* Runs of white space (CR LF included) become one space. */
		if (c == '\r' || c == '\n' || c == '\t' || c == ' ')
		{
			space = o > 0;
			continue;
		}
		if (o + (space ? 2 : 1) >= outsize)
		{
			cut = true;
			break;
		}
		if (space)
			out[o++] = ' ';
		space = false;
		out[o++] = (c >= 0x21 && c <= 0x7e) ? (char) c : '?';
	}
	out[o] = '\0';
	/* Mark a cut, so nobody mistakes a truncated message for the whole. */
	if (cut && outsize > 4)
		memcpy(out + (o < outsize - 4 ? o : outsize - 4), "...", 4);
}

void
azj_sanitize_code(const char *in, size_t inlen, char *out, size_t outsize)
{
	size_t		o = 0;

	if (outsize == 0)
		return;
	for (size_t i = 0; i < inlen && in != NULL && o + 1 < outsize; i++)
	{
		unsigned char c = (unsigned char) in[i];

		if (AZ_ALNUM(c) || c == '_' || c == '-' || c == '.')
			out[o++] = (char) c;
	}
	out[o] = '\0';
}

/* ------------------------------------------------------------------------
 * Key URLs
 * ------------------------------------------------------------------------
 */

static bool
prefix_ci(const char *s, size_t len, const char *prefix)
{
	size_t		plen = strlen(prefix);

	return len >= plen && strncasecmp(s, prefix, plen) == 0;
}

/*
 * https://host[:port]/keys/name[/version][/]
 *
 * Deliberately strict: no user info, query, fragment, percent-encoding or
 * dot segments, so that the URL we build from a parsed reference can only
 * ever reach the host it names.
 */
AzureUrlStatus
azj_parse_key_url(const char *url, size_t len, AzureKeyRef *ref)
{
	size_t		p;
	size_t		start;

	memset(ref, 0, sizeof(*ref));
	if (url == NULL)
		return AZURE_URL_BAD;
	if (prefix_ci(url, len, "http://"))
		return AZURE_URL_PLAIN_HTTP;
	if (!prefix_ci(url, len, "https://"))
		return AZURE_URL_BAD;
	p = strlen("https://");

	/* host: DNS name or IPv4 address */
	start = p;
	while (p < len && (AZ_ALNUM(url[p]) || url[p] == '.' || url[p] == '-'))
	{
		if (p - start + 1 >= sizeof(ref->host))
			return AZURE_URL_BAD;
		ref->host[p - start] = (char) AZ_LOWER(url[p]);
		p++;
	}
	if (p == start || url[start] == '.' || url[start] == '-' || strstr(ref->host, "..") != NULL)
		return AZURE_URL_BAD;

	ref->port = 443;
	if (p < len && url[p] == ':')
	{
		long		port = 0;
		size_t		digits = 0;

		p++;
		while (p < len && AZ_DIGIT(url[p]) && digits < 6)
		{
			port = port * 10 + (url[p] - '0');
			p++;
			digits++;
		}
		if (digits == 0 || port < 1 || port > 65535)
			return AZURE_URL_BAD;
		ref->port = (int) port;
		ref->explicit_port = true;
	}

	if (!prefix_ci(url + p, len - p, "/keys/"))
		return AZURE_URL_BAD;
	p += strlen("/keys/");

	/* name: ^[0-9a-zA-Z-]+$ */
	start = p;
	while (p < len && (AZ_ALNUM(url[p]) || url[p] == '-'))
	{
		if (p - start + 1 >= sizeof(ref->name))
			return AZURE_URL_BAD;
		ref->name[p - start] = url[p];
		p++;
	}
	if (p == start)
		return AZURE_URL_BAD;

	if (p < len && url[p] == '/')
	{
		p++;
		start = p;
		while (p < len && AZ_ALNUM(url[p]))
		{
			if (p - start + 1 >= sizeof(ref->version))
				return AZURE_URL_BAD;
			ref->version[p - start] = url[p];
			p++;
		}
		if (p < len && url[p] == '/' && p > start)
			p++;
	}
	return p == len ? AZURE_URL_OK : AZURE_URL_BAD;
}

bool
azj_same_vault(const AzureKeyRef *a, const AzureKeyRef *b)
{
	return strcmp(a->host, b->host) == 0 && a->port == b->port;
}

/* ------------------------------------------------------------------------
 * Key Vault bodies
 * ------------------------------------------------------------------------
 */

int
azj_bits_of(const uint8_t *n, size_t len)
{
	size_t		i = 0;
	int			bits;

	while (i < len && n[i] == 0)
		i++;
	if (i == len)
		return 0;
	bits = (int) (len - i - 1) * 8;
	for (uint8_t top = n[i]; top != 0; top >>= 1)
		bits++;
	return bits;
}

/* Unix seconds as a JSON integer or real; false when absent or odd. */
static bool
get_time(json_t *obj, const char *key, int64_t *out)
{
	json_t	   *v = json_object_get(obj, key);

	if (json_is_integer(v))
	{
		*out = (int64_t) json_integer_value(v);
		return true;
	}
	if (json_is_real(v))
	{
		double		d = json_real_value(v);

		if (d > -1e15 && d < 1e15)
		{
			*out = (int64_t) d;
			return true;
		}
	}
	return false;
}

bool
azj_parse_key_bundle(const char *body, size_t len, AzureKeyBundle *out,
					 const char **why)
{
	json_t	   *root = load(body, len);
	json_t	   *key;
	json_t	   *v;
	json_t	   *attrs;
	bool		ok = false;

	memset(out, 0, sizeof(*out));
	out->enabled = true;
	*why = "the response is not a JSON object";
	if (root == NULL)
		return false;

	key = json_object_get(root, "key");
	*why = "the response has no \"key\" object";
	if (!json_is_object(key))
		goto done;

	v = json_object_get(key, "kid");
	*why = "the key has no valid \"kid\"";
	if (!json_is_string(v) || json_string_length(v) >= sizeof(out->kid) ||
		azj_parse_key_url(json_string_value(v), json_string_length(v), &out->ref) != AZURE_URL_OK ||
		out->ref.version[0] == '\0')
		goto done;
	memcpy(out->kid, json_string_value(v), json_string_length(v) + 1);

	v = json_object_get(key, "kty");
	*why = "the key has no \"kty\"";
	if (!json_is_string(v))
		goto done;
	azj_sanitize_code(json_string_value(v), json_string_length(v),
					  out->kty, sizeof(out->kty));

	v = json_object_get(key, "n");
	if (v != NULL)
	{
		uint8_t		n[AZJ_MAX_RSA_BYTES + 1];
		size_t		nlen = 0;

		*why = "the key's modulus \"n\" is not valid base64url";
		if (!json_is_string(v) ||
			!cmk_base64url_decode(json_string_value(v), json_string_length(v),
								  n, sizeof(n), &nlen))
			goto done;
		out->bits = azj_bits_of(n, nlen);
	}

	v = json_object_get(key, "key_ops");
	if (v != NULL)
	{
		size_t		i;
		json_t	   *op;

		*why = "the key's \"key_ops\" is not an array of strings";
		if (!json_is_array(v))
			goto done;
		out->ops_listed = true;
		json_array_foreach(v, i, op)
		{
			if (!json_is_string(op))
				goto done;
			if (strcmp(json_string_value(op), "wrapKey") == 0)
				out->can_wrap = true;
			else if (strcmp(json_string_value(op), "unwrapKey") == 0)
				out->can_unwrap = true;
		}
	}

	attrs = json_object_get(root, "attributes");
	if (attrs != NULL)
	{
		*why = "the key's \"attributes\" is not an object";
		if (!json_is_object(attrs))
			goto done;
		v = json_object_get(attrs, "enabled");
		*why = "the key's \"enabled\" attribute is not a boolean";
		if (v != NULL && !json_is_boolean(v))
			goto done;
		if (v != NULL)
			out->enabled = json_is_true(v);
		out->has_nbf = get_time(attrs, "nbf", &out->nbf);
		out->has_exp = get_time(attrs, "exp", &out->exp);
		v = json_object_get(attrs, "recoveryLevel");
		if (json_is_string(v))
			azj_sanitize_code(json_string_value(v), json_string_length(v),
							  out->recovery_level, sizeof(out->recovery_level));
	}
	*why = NULL;
	ok = true;

done:
	json_decref(root);
	return ok;
}

/* {"kid": "...", "value": "<base64url>"} from wrapkey and unwrapkey */
bool
azj_parse_key_result(const char *body, size_t len,
					 char *kid, size_t kid_size,
					 uint8_t *value, size_t value_size, size_t *value_len,
					 const char **why)
{
	json_t	   *root = load(body, len);
	json_t	   *k;
	json_t	   *v;
	bool		ok = false;

	*value_len = 0;
	if (kid_size > 0)
		kid[0] = '\0';
	*why = "the response is not a JSON object";
	if (root == NULL)
		return false;

	k = json_object_get(root, "kid");
	v = json_object_get(root, "value");
	*why = "the response has no \"kid\" string";
	if (!json_is_string(k) || json_string_length(k) >= kid_size)
		goto done;
	*why = "the response has no \"value\" string";
	if (!json_is_string(v))
		goto done;
	*why = "the response's \"value\" is not valid base64url or too long";
	if (!cmk_base64url_decode(json_string_value(v), json_string_length(v),
							  value, value_size, value_len))
	{
		OPENSSL_cleanse(value, value_size);
		*value_len = 0;
		goto done;
	}
	memcpy(kid, json_string_value(k), json_string_length(k) + 1);
	*why = NULL;
	ok = true;

done:
	wipe_string(v);
	json_decref(root);
	return ok;
}

/*
 * Key Vault: {"error":{"code","message","innererror":{"code"}}}
 * IMDS:      {"error":"invalid_request","error_description":"..."}
 * App Service: {"statusCode":400,"message":"...","correlationId":"..."}
 */
bool
azj_parse_error(const char *body, size_t len, AzureServiceError *out)
{
	json_t	   *root = load(body, len);
	json_t	   *err;
	json_t	   *v;
	bool		ok = false;

	memset(out, 0, sizeof(*out));
	if (root == NULL)
		return false;

	err = json_object_get(root, "error");
	if (json_is_object(err))
	{
		json_t	   *inner = json_object_get(err, "innererror");

		v = json_object_get(err, "code");
		if (json_is_string(v))
			azj_sanitize_code(json_string_value(v), json_string_length(v),
							  out->code, sizeof(out->code));
		v = json_object_get(err, "message");
		if (json_is_string(v))
			azj_sanitize_message(json_string_value(v), json_string_length(v),
								 out->message, sizeof(out->message));
		for (int depth = 0; json_is_object(inner) && depth < MAX_BODY_DEPTH; depth++)
		{
			v = json_object_get(inner, "code");
			if (json_is_string(v))
				azj_sanitize_code(json_string_value(v), json_string_length(v),
								  out->inner, sizeof(out->inner));
			inner = json_object_get(inner, "innererror");
		}
		ok = out->code[0] != '\0' || out->message[0] != '\0';
	}
	else if (json_is_string(err))
	{
		azj_sanitize_code(json_string_value(err), json_string_length(err),
						  out->code, sizeof(out->code));
		v = json_object_get(root, "error_description");
		if (json_is_string(v))
			azj_sanitize_message(json_string_value(v), json_string_length(v),
								 out->message, sizeof(out->message));
		ok = true;
	}
	else if (json_is_string(json_object_get(root, "message")))
	{
		v = json_object_get(root, "message");
		azj_sanitize_message(json_string_value(v), json_string_length(v),
							 out->message, sizeof(out->message));
		ok = true;
	}

	json_decref(root);
	return ok;
}

/* A JSON integer, real or decimal digit string, as seconds. */
static bool
get_seconds(json_t *v, int64_t *out)
{
	if (json_is_integer(v))
	{
		*out = (int64_t) json_integer_value(v);
		return true;
	}
	if (json_is_real(v) && json_real_value(v) > -1e15 && json_real_value(v) < 1e15)
	{
		*out = (int64_t) json_real_value(v);
		return true;
	}
	if (json_is_string(v))
	{
		const char *s = json_string_value(v);
		size_t		n = json_string_length(v);
		int64_t		r = 0;

		if (n == 0 || n > 15)
			return false;
		for (size_t i = 0; i < n; i++)
		{
			if (!AZ_DIGIT(s[i]))
				return false;
			r = r * 10 + (s[i] - '0');
		}
		*out = r;
		return true;
	}
	return false;
}

bool
azj_parse_token(const char *body, size_t len, int64_t now,
				char *token, size_t token_size, int64_t *expires_on,
				const char **why)
{
	json_t	   *root = load(body, len);
	json_t	   *t;
	json_t	   *v;
	int64_t		secs;
	bool		ok = false;

	if (token_size > 0)
		token[0] = '\0';
	*expires_on = 0;
	*why = "the token response is not a JSON object";
	if (root == NULL)
		return false;

	t = json_object_get(root, "access_token");
	*why = "the token response has no \"access_token\" string";
	if (!json_is_string(t) || json_string_length(t) == 0)
		goto done;
	*why = "the access token is too long";
	if (json_string_length(t) >= token_size)
		goto done;

	/*
	 * The token goes into an HTTP header: anything but visible ASCII (a
	 * space, CR, LF) could split or forge headers.
	 */
	*why = "the access token contains characters that are not allowed";
	for (size_t i = 0; i < json_string_length(t); i++)
	{
		unsigned char c = (unsigned char) json_string_value(t)[i];

		if (c < 0x21 || c > 0x7e)
			goto done;
	}

	v = json_object_get(root, "token_type");
	*why = "the token is not a bearer token";
	if (v != NULL && (!json_is_string(v) || strcasecmp(json_string_value(v), "Bearer") != 0))
		goto done;

	*why = "the token response has no usable \"expires_on\" or \"expires_in\"";
	if (get_seconds(json_object_get(root, "expires_on"), &secs) && secs > 0)
		*expires_on = secs;
	else if (get_seconds(json_object_get(root, "expires_in"), &secs) &&
			 secs >= 0 && secs < INT32_MAX)
		*expires_on = now + secs;
	else
		goto done;

	memcpy(token, json_string_value(t), json_string_length(t) + 1);
	*why = NULL;
	ok = true;

done:
	wipe_string(t);
	json_decref(root);
	return ok;
}
