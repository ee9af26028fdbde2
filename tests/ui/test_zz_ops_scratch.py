import time
from e2e import UI


def test_refresh(ui: UI) -> None:
    ui.page.clock.install()
    ui.log_in("ada")
    ui.goto("/")
    ui.page.evaluate("() => { document.querySelector('#dashboard-live').dataset.marker = 'old'; }")
    seen = []
    ui.page.on("request", lambda r: seen.append(r.url))
    ui.page.clock.run_for(61_000)
    time.sleep(2)
    ui.page.clock.run_for(3_000)
    time.sleep(1)
    print(seen)
    marker = ui.page.evaluate("() => document.querySelector('#dashboard-live').dataset.marker || 'new'")
    count = ui.page.evaluate("() => document.querySelectorAll('#dashboard-live').length")
    running = ui.page.evaluate("() => document.querySelector('#running-jobs').innerHTML")
    print(marker, count, running[:200])
    assert marker == "new" and count == 1 and "No job is running" in running
