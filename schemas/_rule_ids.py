"""Every rule id a diagnostic or a plan error can carry, in one closed set.

Ids are public: `engine validate` and `engine plan` print them, CI filters on them and
reference/validation_rules.md explains the platform's ones. They live in schemas/ so that the
rules here, the planner (plans/) and the loader and host checks (engine/) share one owner. A
`RuleId` compares equal to and serialises as its string (`RuleId.E3 == "E3"`), so JSON reports
and plan files keep the same bytes.

| ids                          | checked by                                                  |
|------------------------------|-------------------------------------------------------------|
| S1, S2                       | the schema (`schemas._pydantic_errors`, `schemas._validate`) |
| N*, E*, T*, X*, R* (not R8)  | one spec alone (`schemas._rules`); reference ids            |
| F1-F3, V1, D1                | the loader (`engine.specs.loader`)                          |
| E2, L1, L4, R7, R8, O1, SEC1 | the planner (`plans._planner`): a spec against the state    |
| SEC2                         | the planner, with the workflow's secret scope ACL check     |
| M1, G1, E13                  | the serving host's environment (`engine.host.inventory`)    |
| C1, C2                       | the planner, with the Ray cluster's capacity (`plans._capacity`) |
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RuleId"]


class RuleId(StrEnum):
    # -- the schema
    S1 = "S1"  # wrong type, missing or malformed value
    S2 = "S2"  # unknown field
    # -- names
    N1 = "N1"  # endpoint name
    N3 = "N3"  # served entity names
    N4 = "N4"  # tag keys
    # -- served entities and composition
    E1 = "E1"  # external_model XOR registered-model settings
    E2 = "E2"  # no switching between external and self-hosted after create
    E3 = "E3"  # one task for all external models
    E4 = "E4"  # no mixing external and self-hosted entities
    E5 = "E5"  # at most max_served_entities entities
    E6 = "E6"  # served_models XOR served_entities
    E7 = "E7"  # workload_size XOR provisioned concurrency
    E8 = "E8"  # unknown workload_size (warning)
    E9 = "E9"  # workload_type values
    E10 = "E10"  # scale_to_zero_enabled explicit for registered models
    E11 = "E11"  # no provisioned-compute fields on external models
    E12 = "E12"  # entity_name is catalog.schema.model
    E13 = "E13"  # provisioned throughput shape and chunk size
    E15 = "E15"  # environment_vars
    # -- traffic
    T1 = "T1"  # traffic_percentage in [0, 100]
    T2 = "T2"  # routes name entities, one route each
    T3 = "T3"  # percentages sum to 100
    T4 = "T4"  # several entities need traffic_config
    # -- external-model providers
    X1 = "X1"  # provider (deprecated ones warn); name and task required
    X2 = "X2"  # the provider's config block, and no other
    X3 = "X3"  # secret reference XOR plaintext
    X4 = "X4"  # Azure OpenAI / Entra ID settings
    X5 = "X5"  # Bedrock region, provider, authentication
    X6 = "X6"  # Vertex project/region; Databricks workspace URL
    X7 = "X7"  # custom provider URL and one authentication method
    X8 = "X8"  # task values
    # -- rate limits and AI gateway
    R1 = "R1"  # renewal_period
    R2 = "R2"  # rate-limit key and principal
    R4 = "R4"  # calls or tokens set (0 blocks)
    R7 = "R7"  # inference table: catalog/schema; no change while enabled
    R8 = "R8"  # legacy auto_capture_config: immutable, no re-enable
    R9 = "R9"  # PII behaviour; deprecated keyword/topic filters
    H1 = "H1"  # accepted and stored, but this host cannot act on it (warning)
    # -- lifecycle (plans)
    L1 = "L1"  # one config update at a time
    L4 = "L4"  # create-only fields
    O1 = "O1"  # the endpoint belongs to another stack
    SEC1 = "SEC1"  # a secret reference does not resolve
    SEC2 = "SEC2"  # the principal (or the endpoint's creator) may not read the secret scope
    # -- the serving host's environment
    M1 = "M1"  # the model version is not in the catalog
    G1 = "G1"  # a GPU workload type on a host without GPUs
    C1 = "C1"  # no node of the runner cluster can hold a replica (Ray backend)
    C2 = "C2"  # the new replicas fit only once the old version's have stopped (Ray backend)
    # -- loading files
    F1 = "F1"  # the file cannot be read or parsed
    F2 = "F2"  # duplicate key in a mapping
    F3 = "F3"  # document shape is not an endpoint
    V1 = "V1"  # `${env:VAR}` names an unset variable
    D1 = "D1"  # two documents declare the same endpoint
