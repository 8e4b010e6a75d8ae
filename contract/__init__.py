"""Wire formats shared by device, fleet, firmware and training; imports nothing of ours.

Depends on pydantic only, except mqtt_client.py (paho-mqtt, also a base dependency). serial_protocol.py is plain
Python so it runs under MicroPython on the I/O board too."""
