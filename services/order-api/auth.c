/*
 * auth.c — who is asking: API_TOKENS (a client and the SHA-256 of one of its
 * bearer tokens a line; only hashes are kept) and the client of a request's
 * Authorization header. Every route but the public catalog needs one; a
 * client reads, lists and replays only its own orders.
 */
#include "api.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int client_char(int c)
{
    return isalnum(c) || c == '.' || c == '_' || c == '-';
}

static int hex_val(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One line "CLIENT HEX" into t; -1 when malformed. line is NUL-terminated. */
static int parse_token_line(const char *line, api_token *t)
{
    size_t n = 0;
    while (client_char((unsigned char)line[n]))
        n++;
    if (n < 1 || n > API_CLIENT_MAX || (line[n] != ' ' && line[n] != '\t'))
        return -1;
    memcpy(t->client, line, n);
    t->client[n] = '\0';
    line += n;
    while (*line == ' ' || *line == '\t')
        line++;
    for (int i = 0; i < 32; i++) {
        int hi = hex_val((unsigned char)line[2 * i]), lo;
        if (hi < 0 || (lo = hex_val((unsigned char)line[2 * i + 1])) < 0)
            return -1;
        t->hash[i] = (unsigned char)(hi << 4 | lo);
    }
    line += 64;
    while (*line == ' ' || *line == '\t' || *line == '\r')
        line++;
    return *line == '\0' ? 0 : -1;
}

int api_tokens_parse(const char *text, api_token **out, size_t *n, char *err, size_t errlen)
{
    api_token *v = NULL;
    size_t cap = 0, len = 0;
    int lineno = 0;

    *out = NULL;
    *n = 0;
    while (*text) {
        size_t ll = strcspn(text, "\n");
        char line[256];
        const char *p = line;

        lineno++;
        if (ll >= sizeof(line)) {
            snprintf(err, errlen, "API_TOKENS line %d: too long", lineno);
            goto fail;
        }
        memcpy(line, text, ll);
        line[ll] = '\0';
        text += ll + (text[ll] == '\n');
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#' || *p == '\r')
            continue;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            api_token *nv = realloc(v, ncap * sizeof(*nv));
            if (!nv) {
                snprintf(err, errlen, "API_TOKENS: out of memory");
                goto fail;
            }
            v = nv;
            cap = ncap;
        }
        if (parse_token_line(p, &v[len]) < 0) {
            snprintf(err, errlen,
                     "API_TOKENS line %d: want \"CLIENT SHA256-HEX\" (scripts/api-token.sh)",
                     lineno);
            goto fail;
        }
        len++;
    }
    if (len == 0) {
        snprintf(err, errlen, "API_TOKENS has no tokens; make one with scripts/api-token.sh");
        goto fail;
    }
    *out = v;
    *n = len;
    return 0;
fail:
    free(v);
    return -1;
}

const char *api_authenticate(const api_ctx *ctx, const char *authorization)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    const char *tok, *found = NULL;
    size_t n = 0;

    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    /* RFC 6750 b64token: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "="s. */
    while (tok[n] && (isalnum((unsigned char)tok[n]) || strchr("-._~+/", tok[n])))
        n++;
    while (tok[n] == '=')
        n++;
    if (n == 0 || n > API_TOKEN_MAX || tok[n] != '\0')
        return NULL;
    if (EVP_Digest(tok, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return NULL;
    /* Every entry is compared, so the time taken does not tell which matched. */
    for (size_t i = 0; i < ctx->ntokens; i++) {
        if (CRYPTO_memcmp(md, ctx->tokens[i].hash, 32) == 0)
            found = ctx->tokens[i].client;
    }
    return found;
}

const char *api_client_of(http_req *r, const api_ctx *ctx, http_resp *out)
{
    const char *auth = http_header(r, "Authorization");
    const char *client = api_authenticate(ctx, auth);
    if (client)
        return client;
    http_problem(out, 401, "Unauthorized",
                 auth ? "the bearer token is not valid" : "send Authorization: Bearer <token>",
                 NULL);
    http_add_header(out, "WWW-Authenticate",
                    auth ? "Bearer realm=\"ordersuite\", error=\"invalid_token\""
                         : "Bearer realm=\"ordersuite\"");
    return NULL;
}

int api_board_clients_check(const char *list, char *err, size_t errlen)
{
    for (const char *p = list; *p;) {
        size_t n = 0;
        while (client_char((unsigned char)p[n]))
            n++;
        if (n < 1 || n > API_CLIENT_MAX || (p[n] != ',' && p[n] != '\0') ||
            (p[n] == ',' && p[n + 1] == '\0')) {
            snprintf(err, errlen,
                     "BOARD_CLIENTS must be client ids (1-%d of A-Z a-z 0-9 . _ -) separated by "
                     "commas",
                     API_CLIENT_MAX);
            return -1;
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

int api_board_allows(const char *list, const char *client)
{
    size_t n = client ? strlen(client) : 0;
    if (!n)
        return 0;
    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ','), *e = c ? c : p + strlen(p);
        if ((size_t)(e - p) == n && memcmp(p, client, n) == 0)
            return 1;
        p = c ? c + 1 : e;
    }
    return 0;
}
