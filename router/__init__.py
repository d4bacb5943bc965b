"""The cluster router (``goodput route``): one OpenAI endpoint in front of every replica of a
deployment, choosing a replica per request by prefix cache, session, SLO headroom and load
(docs/router.md). It shares the OpenAI request and error code with the in-pod gateway."""
