/*
 * smtp.c — one mail over SMTP with libcurl (see smtp.h): the message, the
 * exchange, and its outcome read from the protocol log.
 */
#include "smtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* The SMTP command a reply answers (see on_debug). */
enum { STAGE_SESSION, STAGE_RCPT, STAGE_DATA };

typedef struct {
    const char *data;
    size_t len, pos;
} payload;

static size_t read_payload(char *buf, size_t size, size_t n, void *arg)
{
    payload *p = arg;
    size_t room = size * n, left = p->len - p->pos;
    size_t k = left < room ? left : room;
    memcpy(buf, p->data + p->pos, k);
    p->pos += k;
    return k;
}

/* What one SMTP exchange saw: the stage of the last command libcurl sent,
 * and the server's first refusal (its reply line, code and stage). */
typedef struct {
    int stage;       /* of the last command sent; the greeting is SESSION */
    int code;        /* the first 4xx/5xx reply's code; 0: none */
    int code_stage;  /* the stage it answered */
    char reply[256]; /* its line, for last_error and email.dlq */
} smtp_trace;

/* libcurl's protocol log: HEADER_OUT is a command libcurl wrote (its verb
 * gives the stage: RCPT, DATA, or anything else of the session; AUTH's
 * continuation lines match no verb and leave it), HEADER_IN a reply line.
 * The first reply whose code is 4xx or 5xx is kept: the QUIT that follows it
 * is not the reason. Codes are read as numbers, never from the text. */
static int on_debug(CURL *c, curl_infotype t, char *data, size_t n, void *arg)
{
    smtp_trace *tr = arg;
    (void)c;
    if (t == CURLINFO_HEADER_OUT && n >= 4) {
        if (strncmp(data, "RCPT", 4) == 0)
            tr->stage = STAGE_RCPT;
        else if (strncmp(data, "DATA", 4) == 0)
            tr->stage = STAGE_DATA;
        else if (strncmp(data, "MAIL", 4) == 0 || strncmp(data, "EHLO", 4) == 0 ||
                 strncmp(data, "HELO", 4) == 0 || strncmp(data, "AUTH", 4) == 0 ||
                 strncmp(data, "STAR", 4) == 0 || strncmp(data, "RSET", 4) == 0)
            tr->stage = STAGE_SESSION;
    } else if (t == CURLINFO_HEADER_IN && n >= 3 && !tr->code &&
               (data[0] == '4' || data[0] == '5') && data[1] >= '0' && data[1] <= '9' &&
               data[2] >= '0' && data[2] <= '9') {
        size_t k = n < sizeof(tr->reply) - 1 ? n : sizeof(tr->reply) - 1;
        tr->code = (data[0] - '0') * 100 + (data[1] - '0') * 10 + (data[2] - '0');
        tr->code_stage = tr->stage;
        memcpy(tr->reply, data, k);
        while (k > 0 && (tr->reply[k - 1] == '\n' || tr->reply[k - 1] == '\r'))
            k--;
        tr->reply[k] = '\0';
    }
    return 0;
}

/* The outcome of one exchange: libcurl's result, and the first refusal. A
 * 5xx is permanent only for the mail it was about (its RCPT or its DATA); a
 * refusal of the session says nothing about the mail, so it waits. */
static smtp_result classify(CURLcode rc, const smtp_trace *tr)
{
    int per_mail = tr->code_stage == STAGE_RCPT || tr->code_stage == STAGE_DATA;
    if (rc == CURLE_OK)
        return SMTP_OK;
    if (tr->code >= 500 && per_mail)
        return SMTP_PERM;
    if (tr->code >= 400 && per_mail)
        return SMTP_TEMP;
    return SMTP_DOWN; /* a refused session, or no answer at all */
}

/* An address goes into RCPT TO and a header: no controls, no brackets. */
static int plain_address(const char *s)
{
    if (!s || !*s || !strchr(s, '@'))
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || *s == '<' || *s == '>' || *s == 0x7f)
            return 0;
    return 1;
}

/* The message: headers, then the body with bare LFs made CRLF (libcurl
 * dot-stuffs it). A subject's control characters become spaces. */
static char *compose(const smtp_server *sv, const smtp_mail *ml, size_t *len)
{
    char date[64], subject[256];
    size_t n = 0, cap;
    char *out;
    time_t now = time(NULL);
    struct tm tm;
    int k;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    snprintf(subject, sizeof(subject), "%s", ml->subject);
    for (char *s = subject; *s; s++)
        if ((unsigned char)*s < 0x20)
            *s = ' ';
    cap = strlen(ml->body) * 2 + strlen(sv->from) + strlen(ml->to) + strlen(subject) +
          strlen(ml->id) + strlen(ml->kind) + 512;
    out = malloc(cap);
    if (!out)
        return NULL;
    k = snprintf(out, cap,
                 "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\n"
                 "Message-ID: <%s.%s@ordersuite>\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n\r\n",
                 sv->from, ml->to, subject, date, ml->id, ml->kind);
    if (k < 0 || (size_t)k >= cap) {
        free(out);
        return NULL;
    }
    n = (size_t)k;
    for (const char *b = ml->body; *b; b++) {
        if (*b == '\n' && (b == ml->body || b[-1] != '\r'))
            out[n++] = '\r';
        out[n++] = *b;
    }
    out[n++] = '\r';
    out[n++] = '\n';
    out[n] = '\0';
    *len = n;
    return out;
}

/* Ends what a failed send leaves of its session. The server may still owe
 * a reply (a DATA answered after the timeout): a next send on that session
 * would wait behind it or read it as its own, and libcurl keeps such a
 * connection (a timeout waiting for DATA's answer does not close it). Its
 * socket is shut down first, so that closing it neither sends a QUIT that
 * waits for that reply nor reads anything more, then the handle is replaced:
 * the next send connects afresh. NULL when no new handle could be made. */
static CURL *drop_session(CURL *c)
{
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK && fd != CURL_SOCKET_BAD)
        shutdown(fd, SHUT_RDWR); /* curl_easy_cleanup closes it */
    curl_easy_cleanup(c);
    return curl_easy_init();
}

smtp_result smtp_send(CURL **ch, const smtp_server *sv, const smtp_mail *ml, char *why,
                      size_t whylen)
{
    CURL *c;
    struct curl_slist *rcpt = NULL;
    char cerr[CURL_ERROR_SIZE] = "";
    smtp_trace tr = {.stage = STAGE_SESSION};
    smtp_result res;
    size_t len = 0;
    char *msg;
    payload p;
    CURLcode rc;

    if (!plain_address(ml->to)) {
        snprintf(why, whylen, "not a plain address: \"%.64s\"", ml->to);
        return SMTP_PERM;
    }
    if (!*ch)
        *ch = curl_easy_init(); /* the one a failed send dropped */
    c = *ch;
    msg = compose(sv, ml, &len);
    if (!c || !msg || !(rcpt = curl_slist_append(NULL, ml->to))) {
        free(msg);
        snprintf(why, whylen, "out of memory");
        return SMTP_TEMP;
    }
    p = (payload){msg, len, 0};
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, sv->url);
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, sv->from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_payload);
    curl_easy_setopt(c, CURLOPT_READDATA, &p);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)sv->timeout_s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_DEBUGFUNCTION, on_debug);
    curl_easy_setopt(c, CURLOPT_DEBUGDATA, (void *)&tr);
    curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);
    rc = curl_easy_perform(c);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(rcpt);
    free(msg);
    res = classify(rc, &tr);
    if (res == SMTP_OK)
        return res; /* every reply read: the session is clean, kept for the next */
    *ch = drop_session(c);
    if (tr.code)
        snprintf(why, whylen, "%s", tr.reply);
    else
        snprintf(why, whylen, "smtp: %s", cerr[0] ? cerr : curl_easy_strerror(rc));
    return res;
}
