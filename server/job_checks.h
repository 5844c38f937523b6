/* job_checks.h: the checks of a job request that need its model (sizes, sites, layer counts,
 * channel counts, whether it is a variant). POST /v1/jobs runs them before it accepts a job, so
 * a request the worker would refuse is answered 422 at once instead of 202 and a failed job. */
#ifndef LOCOD_JOB_CHECKS_H
#define LOCOD_JOB_CHECKS_H

#include "models.h"
#include "request.h"

/* 0 when req fits md; -1 with e filled. A model still loading has no published info yet: only
 * the checks that need none run, and the worker checks the rest when the job runs. */
int locod_check_job_for_model(const locod_model *md, loco_job_request *req, loco_proto_error *e);

#endif
