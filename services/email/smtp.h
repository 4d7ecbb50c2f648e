/*
 * smtp.h — one mail over SMTP (libcurl), for email's mailer (mailer.c).
 *
 * The outcome is judged by the reply's code and the command it answered
 * (libcurl's protocol log), never by the reply's text:
 *
 *   SMTP_OK    the server took it (2xx to DATA's end)
 *   SMTP_TEMP  a 4xx to this mail's RCPT or DATA: try it again later
 *   SMTP_DOWN  no usable session: no reply at all (connect, timeout), or a
 *              4xx/5xx to the greeting, EHLO, AUTH or MAIL FROM: every mail
 *              waits, with backoff
 *   SMTP_PERM  a 5xx to this mail's RCPT or DATA, or a recipient that
 *              cannot be written (controls, brackets): never
 */
#ifndef ORDERSUITE_SMTP_H
#define ORDERSUITE_SMTP_H

#include <curl/curl.h>
#include <stddef.h>

typedef enum { SMTP_OK, SMTP_TEMP, SMTP_DOWN, SMTP_PERM } smtp_result;

typedef struct {
    const char *url;  /* smtp://host:port or smtps://... */
    const char *from; /* envelope and header sender */
    int timeout_s;    /* bound of the whole exchange */
} smtp_server;

typedef struct {
    const char *to, *subject, *body; /* body: LF or CRLF lines */
    const char *id, *kind;           /* Message-ID: <id.kind@ordersuite> */
} smtp_mail;

/* Sends ml to sv on *c (reset first; kept by the caller). After a mail
 * taken the connection stays open and the next send reuses it; after any
 * other outcome of an exchange (a timeout, a transport error, a refusal)
 * its session is ended and *c replaced by a new handle (NULL when none
 * could be made: the next call makes one), so that the next send connects
 * afresh and no late reply of the old session is ever read. The subject's
 * control characters become spaces, the body's bare LFs CRLF. When it was
 * not taken, why gets the server's reply line (at most 255 bytes) or
 * libcurl's error. */
smtp_result smtp_send(CURL **c, const smtp_server *sv, const smtp_mail *ml, char *why,
                      size_t whylen);

#endif
