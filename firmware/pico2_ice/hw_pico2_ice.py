"""The real pico2-ice hardware of the pulse-count firmware (pulsecount.py), under MicroPython.

Copied to the board next to ``main.py``, ``pulsecount.py`` and ``frames.py`` (see
docs/pico2-ice-firmware.md). It needs tinyVision's MicroPython for the pico2-ice: an RP2350B
build (48 GPIOs: CRESET_B is GPIO31, CDONE GPIO40) with the ``ice`` module. It cannot run under
CPython; the simulator has its own ``hw`` (picofleet.plugins.virtual). It implements the ``hw``
interface described in pulsecount.py:

Pins (pico2-ice PCB netlist)
    GPIO21 → iCE40 pin 35 (CLK)      the FPGA clock
    GPIO20 ← iCE40 pin 27 (ICE_27)   the pulses counted (pulled down: an undriven pin counts 0)
    GPIO4/5/6 CRAM MOSI/CS/SCK, GPIO31 CRESET_B, GPIO40 CDONE (through the ``ice`` module)
    GPIO0 the green LED (active low)

Configuring (``fpga_program``)
    ``ice.fpga(...).cram(reader)`` writes the bitstream into the iCE40's CRAM (the sequence of
    pico-ice-sdk's ice_cram.c); the module reads the whole bitstream with one ``read()``, which
    must return a ``bytes`` object: the reader hands over the bytes the firmware holds, without
    a copy. The module does not report CDONE, so it is read afterwards: low means "FPGA did not
    configure: CDONE stayed low".

The clock (``count_start``)
    48 MHz (the default of evaluations, iCEFARM's clock): GPOUT0 from the 48 MHz USB PLL, set up
    by the ``ice`` module and routed to GPIO21: exact and jitter-free. From PIO_CLOCK_MIN_HZ up to
    50 MHz: a PIO state machine (PIO2 SM1) toggling GPIO21 at twice ``clock_hz``; its divider is
    fractional (1/256 steps) from the 150 MHz system clock, so the frequency is exact on average
    (e.g. 1, 10, 12, 16, 24, 25 MHz) or within a fraction of a percent, while single periods may
    jitter by one system clock (6.7 ns). Below that: PWM (slice 2, channel B), whose long
    periods are accurate. More than 0.5 % off is refused with the reason. MicroPython's PWM picks
    an integer divider at high frequencies (12 MHz would become 12.5 MHz), hence the PIO. The
    GPOUT0 divider is never reprogrammed (re-creating the ``ice.fpga`` object could reset a
    configured FPGA on some versions of the module).

Counting (``count_start``/``count_result``)
    A PIO state machine (PIO2 SM0, so that it cannot collide with the ``ice`` module's PIO use)
    counts rising edges on GPIO20: ``wait 0 pin``, ``wait 1 pin``, ``jmp x--``, 3 instructions per
    edge, so pulses closer than 3 system clocks (20 ns: above ~50 M edges/s) are undercounted;
    at that rate 60 s stay below 2**32 edges. The window is started right after a one-shot
    hardware timer is armed and ended by its interrupt (a hard IRQ when the MicroPython build
    offers ``hard=True``, else a scheduled one); the window is exact to some tens of
    microseconds. The count is read from the X register (``mov isr, x``; ``push``).

The serial streams
    ``sys.stdin.buffer``/``sys.stdout.buffer`` (USB CDC); ``micropython.kbd_intr(-1)`` makes 0x03
    data. ``wait`` polls stdin. ``read(n)`` blocks until it has ``n`` bytes: a host that stops
    in the middle of a frame for STALL_MS (it crashed mid-write) would leave the board waiting
    for bytes that never come and deaf to everything else, so a one-shot timer then resets the
    board (``machine.reset()``: it comes back in about a second, without its bitstreams).

Memory
    Two bitstream slots of up to 135,100 bytes (an up5k .bin is 104,090) live on MicroPython's
    heap; completing a load briefly needs a third copy (~320 KB in all for up5k bitstreams).
"""

import select
import sys
import time

import ice
import machine
import micropython
import rp2

CLOCK_PIN = 21
PULSE_PIN = 20
CDONE_PIN = 40
CRESET_PIN = 31
CRAM_CS_PIN = 5
CRAM_MOSI_PIN = 4
CRAM_SCK_PIN = 6
LED_PIN = 0  # green, active low
GPOUT_HZ = 48000000
"""The one clock made by GPOUT0 (CLK_USB / 1)."""
CLOCK_TOLERANCE = 0.005
"""How far off (relative) a PIO or PWM clock may be from clock_hz."""
COUNTER_SM = 8
"""PIO2 state machine 0 on the RP2350 (PIO0 and PIO1 are left to the ice module and others)."""
CLOCK_SM = 9
"""PIO2 state machine 1: the clock for frequencies GPOUT0 does not make."""
PIO_CLOCK_MIN_HZ = 2000
"""The lowest clock made by PIO (its divider reaches 65536: 150 MHz / 65536 / 2 = 1.1 kHz)."""
GPCK = 9
"""GPIO function 9 of the RP2350: CLOCK GPOUT (MicroPython's machine.Pin.ALT_GPCK, where defined)."""
SLOTS = 2
MAX_BITSTREAM = 135100
STALL_MS = 2000
"""A read stuck this long in the middle of a frame resets the board (see the module docstring)."""
WINDOW_BACKSTOP_MS = 200
"""If the window timer never fired (it should), the window is ended this long after it was due."""


@rp2.asm_pio()
def _rising_edges():
    mov(x, invert(null))  # noqa: F821 (PIO assembler names, defined by @rp2.asm_pio)
    label("loop")  # noqa: F821
    wait(0, pin, 0)  # noqa: F821
    wait(1, pin, 0)  # noqa: F821
    jmp(x_dec, "loop")  # noqa: F821
    label("full")  # noqa: F821 (2**32 edges: cannot happen within 60 s, see the module docstring)
    jmp("full")  # noqa: F821


@rp2.asm_pio(set_init=rp2.PIO.OUT_LOW)
def _square_wave():
    set(pins, 1)  # noqa: F821
    set(pins, 0)  # noqa: F821


class _WholeBitstream:
    """A file-like object for ``ice.fpga.cram``: ``read()`` returns the bytes as they are."""

    def __init__(self, data):
        self._data = data

    def read(self, *size):
        return self._data


class _Input:
    """The firmware's input stream: USB CDC stdin (see "The serial streams" above)."""

    def __init__(self):
        self._stream = sys.stdin.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._stall_timer = machine.Timer()
        self._on_stall = self._stalled  # bound once: no allocation per read

    def wait(self, timeout_ms):
        """True as soon as a byte can be read, False after ``timeout_ms``."""
        for _ in self._poll.ipoll(timeout_ms):
            return True
        return False

    def read(self, n):
        """Exactly ``n`` bytes (the board resets if they stop coming in the middle)."""
        if n <= 1:
            return self._stream.read(n)  # only ever called after wait() said a byte is there
        self._stall_timer.init(mode=machine.Timer.ONE_SHOT, period=STALL_MS, callback=self._on_stall)
        try:
            return self._stream.read(n)
        finally:
            self._stall_timer.deinit()

    def _stalled(self, timer):
        machine.reset()  # the host went away in the middle of a frame: start afresh

    def close(self):
        self._stall_timer.deinit()


class _Output:
    """The firmware's output stream: USB CDC stdout."""

    def __init__(self):
        self._stream = sys.stdout.buffer

    def write(self, data):
        self._stream.write(data)


class Hardware:
    """The ``hw`` object of pulsecount.py for a real pico2-ice."""

    def __init__(self):
        micropython.kbd_intr(-1)  # byte 0x03 is data, not Ctrl-C (pulsecount handles it itself)
        self._led = machine.Pin(LED_PIN, machine.Pin.OUT, value=1)
        self._blink_timer = machine.Timer()
        self._blink_until = 0
        self._cdone = machine.Pin(CDONE_PIN, machine.Pin.IN)
        # GPOUT0 at 48 MHz on GPIO21, CRESET/CDONE/CRAM pins (pico2-ice layout, as tinyVision documents)
        self._fpga = ice.fpga(
            cdone=machine.Pin(CDONE_PIN),
            clock=machine.Pin(CLOCK_PIN),
            creset=machine.Pin(CRESET_PIN),
            cram_cs=machine.Pin(CRAM_CS_PIN),
            cram_mosi=machine.Pin(CRAM_MOSI_PIN),
            cram_sck=machine.Pin(CRAM_SCK_PIN),
            frequency=GPOUT_HZ // 1000000,
        )
        self._fpga.start()  # initialises CRESET/CDONE; False (nothing in the FPGA's flash) is fine
        self._pwm = None
        self._clock_sm = rp2.StateMachine(CLOCK_SM)
        self._clock_hz = GPOUT_HZ
        self._pulse_pin = machine.Pin(PULSE_PIN, machine.Pin.IN, machine.Pin.PULL_DOWN)
        self._sm = rp2.StateMachine(COUNTER_SM)
        self._read_x = (rp2.asm_pio_encode("mov(isr, x)", 0), rp2.asm_pio_encode("push()", 0))
        self._window_timer = machine.Timer()
        self._on_window_end = self._window_end  # bound once: the IRQ handler must not allocate
        self._counting = False
        self._window_done = False
        self._window_due = 0
        self._input = None

    # -- the hw interface ---------------------------------------------------------------------
    def serial(self):
        """The chip's unique id as upper-case hex digits (as USB reports it)."""
        return "".join("%02X" % b for b in machine.unique_id())  # noqa: UP031 (MicroPython-safe)

    def board(self):
        """The board type name."""
        return "pico2-ice"

    def blink(self, seconds):
        """Blink the green LED at 2 Hz for ``seconds``, in the background."""
        self._blink_until = time.ticks_add(time.ticks_ms(), int(seconds * 1000))
        self._blink_timer.init(period=250, mode=machine.Timer.PERIODIC, callback=self._blink_tick)

    def _blink_tick(self, timer):
        if time.ticks_diff(self._blink_until, time.ticks_ms()) <= 0:
            timer.deinit()
            self._led.value(1)
        else:
            self._led.toggle()

    def reboot(self):
        """Reboot into this firmware."""
        machine.reset()

    def bootloader(self):
        """Reboot into the RP2350's ROM UF2 bootloader."""
        machine.bootloader()

    def slots(self):
        """Bitstreams held at once."""
        return SLOTS

    def max_bitstream(self):
        """The largest bitstream accepted, in bytes."""
        return MAX_BITSTREAM

    def fpga_program(self, bitstream):
        """Write ``bitstream`` into the FPGA's CRAM; raise Exception(reason) unless CDONE goes high."""
        self._stop_count()
        if not isinstance(bitstream, bytes):
            try:
                bitstream = bytes(bitstream)  # the ice module reads a bytes object
            except MemoryError:
                size = str(len(bitstream))
                raise Exception("not enough memory to program a " + size + "-byte bitstream") from None
        try:
            self._fpga.cram(_WholeBitstream(bitstream))
        except Exception as error:
            raise Exception("FPGA did not configure: " + str(error)) from None
        if not self._cdone.value():
            raise Exception("FPGA did not configure: CDONE stayed low")

    def count_start(self, clock_hz, window_ms):
        """Drive CLK at ``clock_hz`` and count rising edges on ICE_27 for ``window_ms``."""
        self._stop_count()
        self._set_clock(clock_hz)
        self._sm.init(_rising_edges, in_base=self._pulse_pin)  # program start, X = 0xFFFFFFFF
        self._window_done = False
        self._counting = True
        self._window_due = time.ticks_add(time.ticks_ms(), window_ms)
        self._arm_window(window_ms)
        self._sm.active(1)

    def count_result(self):
        """None while the window runs; then the number of rising edges counted."""
        if not self._counting:
            raise Exception("no count is running")
        if not self._window_done:
            if time.ticks_diff(time.ticks_ms(), self._window_due) < WINDOW_BACKSTOP_MS:
                return None
            self._sm.active(0)  # the timer did not fire: end the window late rather than never
        self._counting = False
        self._sm.exec(self._read_x[0])
        self._sm.exec(self._read_x[1])
        return 0xFFFFFFFF - self._sm.get()

    # -- helpers ---------------------------------------------------------------------------------
    def _arm_window(self, window_ms):
        try:
            self._window_timer.init(
                mode=machine.Timer.ONE_SHOT, period=window_ms, callback=self._on_window_end, hard=True
            )
        except TypeError:  # a build without hard timer callbacks: a scheduled one
            self._window_timer.init(
                mode=machine.Timer.ONE_SHOT, period=window_ms, callback=self._on_window_end
            )

    def _window_end(self, timer):
        self._sm.active(0)
        self._window_done = True

    def _stop_count(self):
        self._window_timer.deinit()
        self._sm.active(0)
        self._counting = False

    def _set_clock(self, clock_hz):
        if clock_hz == self._clock_hz:
            return
        self._clock_off()
        self._clock_hz = None
        if clock_hz == GPOUT_HZ:
            # GPOUT0 still runs at 48 MHz: give GPIO21 back to it
            machine.Pin(CLOCK_PIN, machine.Pin.ALT, alt=getattr(machine.Pin, "ALT_GPCK", GPCK))
            actual = clock_hz
        elif clock_hz >= PIO_CLOCK_MIN_HZ:
            system_hz = machine.freq()
            divider_256 = system_hz * 256 // (2 * clock_hz)  # the divider in 1/256 steps, truncated
            self._clock_sm.init(_square_wave, freq=2 * clock_hz, set_base=machine.Pin(CLOCK_PIN))
            self._clock_sm.active(1)
            actual = system_hz * 256 // divider_256 // 2
        else:
            try:
                self._pwm = machine.PWM(machine.Pin(CLOCK_PIN))
                self._pwm.freq(clock_hz)
                self._pwm.duty_u16(32768)
                actual = self._pwm.freq()
            except ValueError as error:
                raise Exception("cannot make a " + str(clock_hz) + " Hz clock: " + str(error)) from None
        if abs(actual - clock_hz) > clock_hz * CLOCK_TOLERANCE:
            raise Exception(
                "cannot make a " + str(clock_hz) + " Hz clock (the nearest is " + str(actual) + " Hz)"
            )
        self._clock_hz = clock_hz

    def _clock_off(self):
        self._clock_sm.active(0)
        if self._pwm is not None:
            self._pwm.deinit()
            self._pwm = None

    def release(self):
        """Stop counting, blinking and the input's stall timer (before leaving to the REPL)."""
        self._stop_count()
        self._set_clock(GPOUT_HZ)
        self._blink_timer.deinit()
        if self._input is not None:
            self._input.close()
        self._led.value(1)

    def stdin(self):
        """The USB serial input (``wait``/``read``)."""
        if self._input is None:
            self._input = _Input()
        return self._input

    def stdout(self):
        """The USB serial output."""
        return _Output()
