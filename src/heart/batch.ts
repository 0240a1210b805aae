/** The most readings one ingest request may carry: the route refuses more, and clients split their batches at it. */
export const BATCH_MAX = 500
