"""code/lesson07/dapr/ cannot run here (no sidecar), so it is checked against the code it would
replace: a subscription per topic, scoped to the group that reads it, dead letters where ours go,
and the same visibility timeout and delivery limit as the Compose file's defaults."""

from pathlib import Path

import yaml

DAPR = Path(__file__).resolve().parents[2] / "code" / "lesson07" / "dapr"
COMPOSE = Path(__file__).resolve().parents[2] / "code" / "lesson07" / "compose.yaml"


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DAPR / name).read_text()) if d]


def component_metadata(name: str) -> dict:
    (component,) = load(name)
    return {m["name"]: m["value"] for m in component["spec"]["metadata"]}


def test_each_topic_has_a_subscription_for_its_group_with_our_dead_letter_topic(agents):
    subscriptions = {s["spec"]["topic"]: s for s in load("subscriptions.yaml")}
    assert set(subscriptions) == {topic for topic, _ in agents.SERVICES.values()}
    for group, (topic, _) in agents.SERVICES.items():
        spec = subscriptions[topic]
        assert spec["scopes"] == [group]
        assert spec["spec"]["deadLetterTopic"] == agents.deadletter(topic)
        assert spec["spec"]["pubsubname"] == "pubsub"


def test_the_components_use_the_redis_service_and_our_delivery_settings():
    environment = yaml.safe_load(COMPOSE.read_text())["x-agent"]["environment"]
    pubsub = component_metadata("pubsub.yaml")
    assert pubsub["consumerID"] == "{appID}" and pubsub["redisHost"] == "redis:6379"
    visibility = environment["VISIBILITY_TIMEOUT_MS"].split(":-")[1].rstrip("}")
    assert pubsub["processingTimeout"] == visibility
    assert component_metadata("statestore.yaml")["redisHost"] == "redis:6379"
    (resiliency,) = load("resiliency.yaml")
    retries = resiliency["spec"]["policies"]["retries"]["deliveries"]["maxRetries"]
    max_deliveries = environment["MAX_DELIVERIES"].split(":-")[1].rstrip("}")
    assert retries + 1 == int(max_deliveries)
