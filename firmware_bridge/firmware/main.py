"""LiftGuard I/O board firmware (MicroPython on an RP2040 board, e.g. Raspberry Pi Pico).

Copy serial_protocol.py (from contract/), logic.py and this file to the board's flash
(`mpremote cp contract/serial_protocol.py firmware_bridge/firmware/logic.py
firmware_bridge/firmware/main.py :`). The host talks to it over the USB serial port
(/dev/ttyACM0 on the host), see docs/INSTALL.md for the wiring.

Layers of release, outermost first:
1. hardware: the fire-service contact is in series with the relay contact; the relay driver has a
   pull-down, so a board that is unpowered, resetting or unprogrammed leaves the relay released;
2. the RP2040 hardware watchdog (WDT_MS) resets a hung firmware -> pins reset -> released;
3. logic.py: heartbeat timeout, hold cap, fire-service input (also from the pin interrupt).
"""

import sys
import time

import machine

try:
    import micropython
except ImportError:  # CPython tests
    micropython = None

from logic import BoardLogic

RELAY_GPIO = 15  # drives the relay transistor; 1 = energised = door held
FIRE_GPIO = 14  # opto-coupler from the fire-service / inspection contact
FIRE_ACTIVE_HIGH = False  # the opto pulls the pin low while fire service is active
DOOR_GPIO = 13  # optional door-open contact (self-test loopback), opto-coupled
DOOR_ACTIVE_HIGH = False
DOOR_WIRED = True
BEACON_GPIO = 12
VOICE_GPIO = 11  # trigger input of a voice playback module (pulsed once per clip)
LED_GPIO = 25  # on-board LED: toggles every tick batch = firmware alive
TICK_MS = 5
WDT_MS = 2000
VOICE_PULSE_MS = 150


class VoiceTrigger:
    """Pulses the voice module's trigger pin without blocking the loop."""

    def __init__(self, pin, clock):
        self.pin = pin
        self.clock = clock
        self.until = None

    def __call__(self, clip):
        # Single-clip modules: any clip number plays the recorded warning.
        self.pin.value(1)
        self.until = self.clock.ticks_add(self.clock.ticks_ms(), VOICE_PULSE_MS)

    def service(self):
        if self.until is not None and self.clock.ticks_diff(self.clock.ticks_ms(), self.until) >= 0:
            self.pin.value(0)
            self.until = None


def build(write, machine_mod=machine, clock=time):
    """Pins + logic, relay released. Returned as (logic, voice) so run() can service the voice pulse."""
    Pin = machine_mod.Pin
    relay = Pin(RELAY_GPIO, Pin.OUT, value=0)
    fire = Pin(FIRE_GPIO, Pin.IN, Pin.PULL_UP)
    door = Pin(DOOR_GPIO, Pin.IN, Pin.PULL_UP) if DOOR_WIRED else None
    beacon = Pin(BEACON_GPIO, Pin.OUT, value=0)
    voice = VoiceTrigger(Pin(VOICE_GPIO, Pin.OUT, value=0), clock)
    logic = BoardLogic(relay, write, clock, fire=fire, fire_active_high=FIRE_ACTIVE_HIGH, door=door,
                       door_active_high=DOOR_ACTIVE_HIGH, beacon=beacon, voice=voice)
    fire.irq(handler=logic.fire_interrupt, trigger=Pin.IRQ_FALLING | Pin.IRQ_RISING)
    return logic, voice


def run():
    import select

    if micropython is not None:
        micropython.kbd_intr(-1)  # frames may contain 0x03: Ctrl-C must not stop the firmware
    rx = sys.stdin.buffer
    tx = sys.stdout.buffer
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)
    logic, voice = build(tx.write)
    led = machine.Pin(LED_GPIO, machine.Pin.OUT, value=0)
    wdt = machine.WDT(timeout=WDT_MS)
    n = 0
    while True:
        budget = 64  # bound the bytes read per tick so tick() always runs
        while budget and poller.poll(0):
            logic.receive(rx.read(1))
            budget -= 1
        logic.tick()
        voice.service()
        wdt.feed()
        n += 1
        if n % 100 == 0:
            led.toggle()
        time.sleep_ms(TICK_MS)


if __name__ == "__main__":
    run()
