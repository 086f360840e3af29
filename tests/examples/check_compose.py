#!/usr/bin/env python3
"""Checks deploy/docker-compose.yml and deploy/Dockerfile without Docker.

usage: check_compose.py COMPOSE_FILE DOCKERFILE

The compose file must parse (duplicate keys are errors), keep the seed tutorial's ports,
run Kafka in KRaft mode without ZooKeeper, RabbitMQ with its management plugin and the
three NSQ daemons, and point every ferry --broker URL at the service that runs that
broker. Exits 0 when it does, 1 with the list of problems when not (or when PyYAML is
missing: scripts/deps.sh test installs it).
"""
import re
import sys
from urllib.parse import parse_qs, urlsplit

try:
    import yaml
except ImportError:
    print("python3-yaml is not installed: run scripts/deps.sh test (or apt-get install python3-yaml)")
    sys.exit(1)

# The seed's "how to run" section: host port -> container port, per service.
SEED_PORTS = {
    "kafka": {"9092": "9092", "9093": "9093"},
    "rabbitmq": {"5672": "5672", "15672": "15672"},
    "nsqlookupd": {"4160": "4160", "4161": "4161"},
    "nsqd": {"4150": "4150", "4151": "4151"},
    "nsqadmin": {"4440": "4171"},
}
# ferry's HTTP services, on the seed's web service ports 8080-8083.
FERRY_SERVICES = {
    "ferry": ("ferry", "8080"),
    "httplib": ("ferry-httplib-orders", "8081"),
    "restinio": ("ferry-restinio-orders", "8082"),
    "pistache": ("ferry-pistache-orders", "8083"),
}
# Which service a broker URL scheme must name, and on which port.
BROKER_SERVICE = {"kafka": ("kafka", 9092), "amqp": ("rabbitmq", 5672), "nsq": ("nsqd", 4150)}

problems = []


def problem(text):
    problems.append(text)


class UniqueKeyLoader(yaml.SafeLoader):
    pass


def construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)  # resolves "<<: *anchor" merges first
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)


def ports_of(service):
    """host port -> container port, from short ("8080:80") or long syntax."""
    out = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out[str(entry.get("published"))] = str(entry.get("target"))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 1:
            out[parts[0]] = parts[0]
        else:
            out[parts[-2]] = parts[-1]
    return out


def as_list(command):
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def environment_of(service):
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def flag_values(args, flag):
    values = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


def depends_on(service):
    deps = service.get("depends_on", [])
    return set(deps) if isinstance(deps, list) else set(deps.keys())


def check_kafka(services):
    kafka = services.get("kafka", {})
    if not re.match(r"^(apache/kafka|bitnami/kafka|confluentinc/cp-kafka)(:|$)", str(kafka.get("image", ""))):
        problem(f"kafka: unexpected image {kafka.get('image')!r}")
    env = environment_of(kafka)
    roles = env.get("KAFKA_PROCESS_ROLES", env.get("KAFKA_CFG_PROCESS_ROLES", ""))
    if set(r.strip() for r in roles.split(",")) != {"broker", "controller"}:
        problem(f"kafka: KRaft wants KAFKA_PROCESS_ROLES=broker,controller, got {roles!r}")
    for key in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_CONTROLLER_LISTENER_NAMES"):
        if key not in env:
            problem(f"kafka: KRaft setting {key} is missing")
    voters = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    if not re.fullmatch(r"\d+@kafka:\d+", voters) or voters.split("@")[0] != env.get("KAFKA_NODE_ID"):
        problem(f"kafka: KAFKA_CONTROLLER_QUORUM_VOTERS {voters!r} must be <KAFKA_NODE_ID>@kafka:<port>")
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    if controller and controller + "://" not in env.get("KAFKA_LISTENERS", ""):
        problem(f"kafka: KAFKA_LISTENERS has no {controller} listener")
    advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
    if "://kafka:9092" not in advertised:
        problem("kafka: containers reach Kafka at kafka:9092; KAFKA_ADVERTISED_LISTENERS must advertise it")
    if "://localhost:9093" not in advertised:
        problem("kafka: the host reaches Kafka at localhost:9093 (the seed's); advertise it")
    if controller and controller + "://" in advertised:
        problem("kafka: the controller listener must not be advertised")


def check_zookeeper(compose):
    for name, service in compose["services"].items():
        text = yaml.safe_dump(service).lower()
        if "zookeeper" in name.lower() or "zookeeper" in text:
            problem(f"{name}: mentions ZooKeeper; Kafka runs in KRaft mode here")


def check_nsq(services):
    for name in ("nsqlookupd", "nsqd", "nsqadmin"):
        image = str(services.get(name, {}).get("image", ""))
        if not image.startswith("nsqio/nsq"):
            problem(f"{name}: image {image!r} is not nsqio/nsq")
        if not any(name in arg for arg in as_list(services.get(name, {}).get("command"))):
            problem(f"{name}: the command does not run {name}")
    nsqd = as_list(services.get("nsqd", {}).get("command"))
    if "nsqlookupd:4160" not in flag_values(nsqd, "--lookupd-tcp-address"):
        problem("nsqd: --lookupd-tcp-address must be nsqlookupd:4160")
    if "nsqd" not in flag_values(nsqd, "--broadcast-address"):
        problem("nsqd: --broadcast-address=nsqd, or nsqlookupd hands out the container's hostname")
    admin = as_list(services.get("nsqadmin", {}).get("command"))
    if "nsqlookupd:4161" not in flag_values(admin, "--lookupd-http-address"):
        problem("nsqadmin: --lookupd-http-address must be nsqlookupd:4161")


def check_rabbitmq(services):
    image = str(services.get("rabbitmq", {}).get("image", ""))
    if not re.match(r"^rabbitmq:[\w.-]*management", image):
        problem(f"rabbitmq: image {image!r} has no management plugin (use a rabbitmq:*-management tag)")


def check_ferry(compose):
    services = compose["services"]
    volumes = set((compose.get("volumes") or {}).keys())
    for name, (program, port) in FERRY_SERVICES.items():
        service = services.get(name)
        if service is None:
            continue  # reported with the missing services
        build = service.get("build", {})
        if not isinstance(build, dict) or build.get("dockerfile") != "deploy/Dockerfile" or build.get("context") != "..":
            problem(f"{name}: must build deploy/Dockerfile from the repository root (context ..)")
        entry = as_list(service.get("entrypoint")) or ["ferry"]  # the image's ENTRYPOINT is ferry
        if entry[0] != program:
            problem(f"{name}: runs {entry[0]!r}, expected {program!r}")
        args = entry[1:] + as_list(service.get("command"))
        if name == "ferry" and (not args or args[0] != "serve"):
            problem("ferry: the command must be `serve`")
        listen = flag_values(args, "--listen")
        if listen != [f"0.0.0.0:{port}"]:
            problem(f"{name}: --listen must be 0.0.0.0:{port}, got {listen}")
        if ports_of(service) != {port: port}:
            problem(f"{name}: ports must be {port}:{port}, got {ports_of(service)}")
        brokers = flag_values(args, "--broker")
        names, schemes = set(), set()
        for spec in brokers:
            if "=" not in spec.split("://")[0]:
                problem(f"{name}: --broker {spec!r} is not NAME=URL")
                continue
            broker_name, url = spec.split("=", 1)
            names.add(broker_name)
            parts = urlsplit(url)
            schemes.add(parts.scheme)
            if parts.scheme in BROKER_SERVICE:
                want_host, want_port = BROKER_SERVICE[parts.scheme]
                if parts.hostname != want_host or parts.port != want_port:
                    problem(f"{name}: {broker_name} points at {parts.hostname}:{parts.port}, "
                            f"expected the {want_host} service on {want_port}")
                if want_host not in depends_on(service):
                    problem(f"{name}: uses {want_host} but does not depend on it")
                if parts.scheme == "nsq":
                    lookupd = parse_qs(parts.query).get("lookupd", [])
                    if lookupd != ["nsqlookupd:4161"]:
                        problem(f"{name}: nsq lookupd must be nsqlookupd:4161, got {lookupd}")
                if parts.scheme == "amqp" and parts.username == "guest":
                    problem(f"{name}: RabbitMQ admits guest from localhost only; use the compose file's user")
            elif parts.scheme == "sqlite":
                path = url[len("sqlite://") :]
                mounts = [str(v).split(":") for v in service.get("volumes", [])]
                if not any(len(m) >= 2 and m[0] in volumes and path.startswith(m[1].rstrip("/") + "/") for m in mounts):
                    problem(f"{name}: the sqlite file {path} is not on a named volume")
            else:
                problem(f"{name}: unexpected broker URL {url!r}")
        if not {"kafka", "amqp", "nsq"} <= schemes:
            problem(f"{name}: must be configured for kafka, amqp and nsq, got {sorted(schemes)}")
        if not {"kafka", "rabbitmq", "nsq"} <= names:
            problem(f"{name}: brokers should be named kafka, rabbitmq and nsq (the seed's routes), got {sorted(names)}")
        rabbit_env = environment_of(services.get("rabbitmq", {}))
        user = rabbit_env.get("RABBITMQ_DEFAULT_USER")
        for spec in brokers:
            parts = urlsplit(spec.split("=", 1)[-1])
            if parts.scheme == "amqp" and user and (parts.username, parts.password) != (
                user, rabbit_env.get("RABBITMQ_DEFAULT_PASS")):
                problem(f"{name}: the amqp URL's user is not RabbitMQ's RABBITMQ_DEFAULT_USER")


def check_dockerfile(path):
    text = open(path, encoding="utf-8").read()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if not froms or not all(re.match(r"^debian:(12|bookworm)([-.:]|$)", f) for f in froms):
        problem(f"Dockerfile: every stage must be Debian 12, got {froms}")
    if "cmake --build" not in text or "cmake -S" not in text:
        problem("Dockerfile: must configure and build with cmake")
    for tool in ("pip ", "curl -L", "wget ", "git clone"):
        if tool in text:
            problem(f"Dockerfile: fetches with {tool.strip()!r}; only apt packages are allowed")
    for package in ("libcpp-httplib-dev", "librestinio-dev", "libpistache-dev"):
        if package not in text:
            problem(f"Dockerfile: does not install {package}")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    try:
        compose = yaml.load(open(sys.argv[1], encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        print(f"{sys.argv[1]}: not valid YAML: {e}")
        return 1
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        print(f"{sys.argv[1]}: no services")
        return 1
    if "version" in compose:
        problem("the top-level 'version' key is obsolete in the Compose specification")
    services = compose["services"]
    for name in list(SEED_PORTS) + list(FERRY_SERVICES):
        if name not in services:
            problem(f"service {name} is missing")
    for name, service in services.items():
        if not isinstance(service, dict) or not (service.get("image") or service.get("build")):
            problem(f"{name}: has neither image nor build")
            continue
        for dep in depends_on(service):
            if dep not in services:
                problem(f"{name}: depends on unknown service {dep}")
    for name, want in SEED_PORTS.items():
        if name in services and ports_of(services[name]) != want:
            problem(f"{name}: ports {ports_of(services[name])}, the seed's are {want}")
    published = {}
    for name, service in services.items():
        for host in ports_of(service) if isinstance(service, dict) else {}:
            if host in published:
                problem(f"host port {host} is published by both {published[host]} and {name}")
            published[host] = name
    check_zookeeper(compose)
    check_kafka(services)
    check_rabbitmq(services)
    check_nsq(services)
    check_ferry(compose)
    check_dockerfile(sys.argv[2])
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{sys.argv[1]}: {len(services)} services, seed ports, KRaft, broker URLs: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
