/*
 * worker_span.c — the spans of a handled message (see docs/TRACING.md):
 * a CONSUMER "process <key>" span per delivery, the child of the publish
 * span whose context the message carries (traceparent / tracestate headers,
 * as a longstr or as bytes), and a CLIENT "db transaction" span, its child,
 * for the transaction the delivery's effect was committed (or rolled back)
 * in. Kept out of worker_dispatch.c so the dispatch code has only a few
 * calls to make, on its one-by-one path and on its batch path.
 */
#include "worker_int.h"
#include "trace.h"

#include <stdio.h>
#include <string.h>

const trace_ctx *worker__span_begin(worker *w, const mq_delivery *d, trace_span *sp)
{
    trace_ctx parent;
    char name[TRACE_NAME_MAX];
    /* An absent, invalid or oversized context starts a new trace. */
    int has = trace_parse(d->traceparent[0] ? d->traceparent : NULL, d->tracestate, &parent) == 0;

    snprintf(name, sizeof(name), "process %.80s", d->routing_key);
    trace_span_start(sp, name, TRACE_KIND_CONSUMER, has ? &parent : NULL);
    trace_span_str(sp, "messaging.system", "rabbitmq");
    trace_span_str(sp, "messaging.operation.type", "process");
    trace_span_str(sp, "messaging.operation.name", "process");
    /* The exchange this copy came through: sales.events the first time,
     * sales.retry after a retry tier or a dlq replay (the default
     * exchange has the conventions' name amq.default). */
    trace_span_str(sp, "messaging.destination.name", d->exchange[0] ? d->exchange : "amq.default");
    trace_span_str(sp, "messaging.rabbitmq.destination.routing_key", d->routing_key);
    trace_span_str(sp, "messaging.message.id", d->message_id);
    trace_span_str(sp, "messaging.message.conversation_id", d->correlation_id);
    trace_span_str(sp, "messaging.consumer.group.name", w->def->service);
    trace_span_int(sp, "messaging.rabbitmq.message.attempt", d->attempt);
    return trace_set_current(&sp->ctx);
}

void worker__span_end(const mq_delivery *d, trace_span *sp, int64_t tx_start_ns, int committed,
                      mq_result r, const char *err, const trace_ctx *prev)
{
    trace_set_current(prev);
    if (tx_start_ns > 0) {
        trace_span tx;
        trace_span_start(&tx, "db transaction", TRACE_KIND_CLIENT, &sp->ctx);
        tx.start_ns = tx_start_ns;
        trace_span_str(&tx, "db.system.name", "postgresql");
        trace_span_str(&tx, "db.operation.name", committed ? "COMMIT" : "ROLLBACK");
        if (!committed)
            trace_span_fail(&tx, "rolled back");
        trace_span_end(&tx, d->correlation_id);
    }
    if (r != MQ_DONE)
        trace_span_fail(sp, err && *err ? err : r == MQ_RETRY ? "retry" : "rejected");
    trace_span_end(sp, d->correlation_id);
}
