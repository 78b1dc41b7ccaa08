/* SPDX-License-Identifier: MIT */
/*
 * The boot's outcome as Prometheus metrics, in the text format node-exporter's textfile collector
 * reads (STATUS_DIR/metrics/factory-init.prom). Pure: rendered from the status record only.
 */
#ifndef FACTORY_INIT_METRICS_H
#define FACTORY_INIT_METRICS_H

#include "status.h"

#define METRICS_DIR STATUS_DIR "/metrics"
#define METRICS_FILE METRICS_DIR "/factory-init.prom"

/*
 * The metrics for st (every family with HELP and TYPE; one sample per label set: steps of the
 * same name add up). version: factory-init's. Returns a string the caller frees, or NULL.
 */
char *metrics_render(const struct status *st, const char *version);

#endif
