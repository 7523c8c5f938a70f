import pytest

from transforms.kafka_connection import KafkaConnection


def test_defaults_reach_the_local_broker():
    connection = KafkaConnection.from_env({})
    assert connection.client_config() == {"bootstrap_servers": ["127.0.0.1:19092"], "security_protocol": "PLAINTEXT",
                                          "client_id": "customer-journeys"}


def test_sasl_ssl_from_env_and_secret_files(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-value\n")
    env_file = tmp_path / "kafka.env"
    env_file.write_text("# a comment\nJOURNEYS_KAFKA_BOOTSTRAP=file-host:9093\nJOURNEYS_KAFKA_SASL_USERNAME=svc\n")
    connection = KafkaConnection.from_env({
        "JOURNEYS_KAFKA_BOOTSTRAP": "b1:9093,b2:9093", "JOURNEYS_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "JOURNEYS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "JOURNEYS_KAFKA_SASL_PASSWORD_FILE": str(secret),
        "JOURNEYS_KAFKA_SSL_CAFILE": "/etc/ca.pem", "UNRELATED": "x"}, env_file=env_file)
    config = connection.client_config()
    assert config["bootstrap_servers"] == ["b1:9093", "b2:9093"]  # the environment wins over the file
    assert config["sasl_plain_username"] == "svc" and config["sasl_plain_password"] == "s3cret-value"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512" and config["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(connection) and "s3cret" not in connection.describe()


def test_incomplete_security_settings_are_refused():
    with pytest.raises(ValueError, match="SASL mechanism"):
        KafkaConnection(security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="PASSWORD"):
        KafkaConnection(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")
    with pytest.raises(ValueError, match="security protocol"):
        KafkaConnection(security_protocol="TLS")


def test_a_password_from_a_file_is_not_pickled_with_the_connection(tmp_path):
    import pickle

    secret = tmp_path / "password"
    secret.write_text("file-borne-secret")
    settings = {"JOURNEYS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEYS_KAFKA_SASL_MECHANISM": "PLAIN",
                "JOURNEYS_KAFKA_SASL_USERNAME": "svc", "JOURNEYS_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    shipped = pickle.dumps(KafkaConnection.from_env(settings))
    assert b"file-borne-secret" not in shipped
    assert pickle.loads(shipped).client_config()["sasl_plain_password"] == "file-borne-secret"
    secret.write_text("rotated")  # read where it is used: a rotated secret needs no new job
    assert pickle.loads(shipped).client_config()["sasl_plain_password"] == "rotated"


def test_a_password_from_the_environment_or_an_env_file_is_not_pickled_with_the_connection(tmp_path, monkeypatch):
    import pickle

    from transforms.secret import SecretUnavailable

    settings = {"JOURNEYS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEYS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "JOURNEYS_KAFKA_SASL_USERNAME": "svc", "JOURNEYS_KAFKA_SASL_PASSWORD": "env-borne-secret"}
    connection = KafkaConnection.from_env(settings)
    assert connection.client_config()["sasl_plain_password"] == "env-borne-secret"  # the launcher has it
    shipped = pickle.dumps(connection)
    assert b"env-borne-secret" not in shipped and "env-borne-secret" not in repr(connection)
    with pytest.raises(SecretUnavailable, match="JOURNEYS_KAFKA_SASL_PASSWORD"):  # a worker without it says so
        pickle.loads(shipped).client_config()
    monkeypatch.setenv("JOURNEYS_KAFKA_SASL_PASSWORD", "set-on-the-worker")
    assert pickle.loads(shipped).client_config()["sasl_plain_password"] == "set-on-the-worker"
    monkeypatch.delenv("JOURNEYS_KAFKA_SASL_PASSWORD")

    env_file = tmp_path / "kafka.env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in {**settings,
                                                          "JOURNEYS_KAFKA_SASL_PASSWORD": "file-held"}.items()))
    shipped = pickle.dumps(KafkaConnection.from_env({}, env_file))
    assert b"file-held" not in shipped
    assert pickle.loads(shipped).client_config()["sasl_plain_password"] == "file-held"  # read again where used
