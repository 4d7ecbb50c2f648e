/*
 * http.c — loadgen's HTTP/1.1 client: keep-alive, Content-Length answers only
 * (order-api sends them), a whole answer read before the next request.
 */
#include "loadgen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int lg_dial(const lg_target *t)
{
    struct sockaddr_in a;
    struct timeval tv = {.tv_sec = 15};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)t->port);
    if (inet_pton(AF_INET, t->host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

int lg_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int lg_read_response(int fd, char *buf, size_t cap, char **body, size_t *blen, int *close_after)
{
    size_t have = 0, head = 0, need = 0;
    int status;
    long clen = -1;

    for (;;) {
        ssize_t r = recv(fd, buf + have, cap - 1 - have, 0);
        char *end;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = '\0';
        if (!head && (end = strstr(buf, "\r\n\r\n"))) {
            head = (size_t)(end - buf) + 4;
            for (char *l = strstr(buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
                if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                    clen = strtol(l + 17, NULL, 10);
                else if (strncasecmp(l + 2, "Connection: close", 17) == 0)
                    *close_after = 1;
            }
            if (clen < 0 || (size_t)clen > cap - 1 - head)
                return -1; /* the server sends lengths; anything else is a broken answer */
            need = head + (size_t)clen;
        }
        if (head && have >= need)
            break;
        if (have >= cap - 1)
            return -1;
    }
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    buf[need] = '\0';
    *body = buf + head;
    *blen = need - head;
    return status;
}
