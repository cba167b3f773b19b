"""The app names missing X11 libraries in words before Qt would abort (issue 18, item 10)."""

from app.linux_libraries import XCB_LIBRARIES, missing_xcb_packages, uses_xcb, xcb_problem
from app.main import main

X11 = {"DISPLAY": ":0"}


def test_xcb_is_used_on_linux_unless_another_platform_is_chosen() -> None:
    assert uses_xcb([], X11, "linux")
    assert not uses_xcb([], X11, "darwin")
    assert not uses_xcb([], {"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert uses_xcb([], {"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not uses_xcb(["-platform", "wayland"], X11, "linux")
    assert uses_xcb(["-platform", "xcb"], {"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert not uses_xcb([], {"WAYLAND_DISPLAY": "wayland-0"}, "linux")


def test_missing_libraries_are_named_with_the_command_that_installs_them() -> None:
    absent = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    assert missing_xcb_packages(lambda name: name not in absent) == ["libxcb-icccm4", "libxcb-keysyms1"]
    message = xcb_problem([], {"QT_QPA_PLATFORM": "xcb"}, lambda name: name not in absent)
    assert message is not None and "\n" not in message
    assert "libxcb-icccm4, libxcb-keysyms1;" in message
    assert "sudo apt install " + " ".join(XCB_LIBRARIES.values()) in message
    assert xcb_problem([], {"QT_QPA_PLATFORM": "xcb"}, lambda name: True) is None


def test_the_app_exits_with_the_message_instead_of_qt_aborting(monkeypatch, capsys) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr("app.linux_libraries._loads", lambda name: name != "libxcb-cursor.so.0")
    monkeypatch.setattr("app.linux_libraries.sys.platform", "linux")
    assert main(["mlx-sd-app"]) == 1
    assert "libxcb-cursor0" in capsys.readouterr().err
