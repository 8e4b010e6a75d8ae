import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import MosquittoBroker


def test_retained_message_survives_a_broker_restart(mosquitto: MosquittoBroker) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    mosquitto.restart()

    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("t/retained", qos=1)
    sub.loop_start()
    import time

    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    assert got == [b"kept"]
