"""The live story page in a real browser: headless Chromium, driven by Selenium, against a real
`storywire serve --demo` that this script starts (and stops) itself.

It holds the page to its DOM contract:

- `/` links each story (`a.story-link[href="/stories/<id>"]`), and the link opens the story page;
- the story page shows the story as `GET /v1/stories/{id}` has it: `h1#headline`, `#story-status`
  in words, every fact as `#facts li.fact[data-fact-id]` with its `.statement`, `.fact-status` and
  `.attribution`s;
- `#live-state[data-state]` says `live` once the page's EventSource is open;
- an update published over gRPC (the CLI) appears in `#updates` within 2 s, without a reload;
  a correction shows as `.correction` inside its fact, with the wording it replaced (from the
  story's history) and its reason, and the update says who published it (`.update-by`);
- after the server is stopped (SIGTERM) and started again on the same ports and `--data-dir`, the
  page says so, reconnects by itself and shows the next update exactly once, no sequence twice;
- the server-rendered JSON-LD (`script#jsonld`, fetched without JavaScript) is a schema.org
  `LiveBlogPosting` that matches the story: its headline, `inLanguage`, one `BlogPosting` per
  event, and a `coverageEndTime` once the story is concluded;
- a concluded story shows CONCLUDED and `#live-state[data-state=ended]`;
- a screenshot of the page is not blank (more than 50 colours). With STORYWIRE_SCREENSHOT_OUT set
  to a path (e.g. docs/live-page.png) the screenshot is written there too, for the README.

Every wait has a deadline; nothing sleeps to synchronise. Each check prints `ok:` or `FAILED:`; the
last line is `browser: N passed, M failed`, and the exit status is 1 if any check failed.

Usage: python tests/browser/live_page.py path/to/storywire
"""

import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

STORY_ID = "nk-diplomat-italy"
REPO = Path(__file__).resolve().parents[2]

# Debian's packages (chromium, chromium-driver); Selenium Manager would try to download a browser,
# which cannot work offline, so both paths are explicit.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# The page's promise: a published update is on screen within 2 s, pushed, not polled by a reload.
UPDATE_DEADLINE = 2
# Starting the server, loading a page, opening the event stream: generous, since a debug build on
# two shared cores can be slow, but still a deadline.
START_DEADLINE = 15
# EventSource retries after about 3 s by default; the page may back off further. Reconnecting to a
# restarted server must still take well under this.
RECONNECT_DEADLINE = 20
# A blank or broken page renders in a handful of colours; text, borders and anti-aliasing give a
# real one hundreds.
MIN_SCREENSHOT_COLOURS = 50


class CheckFailed(Exception):
    """A broken promise of the page, with what was seen instead."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def normalise(text):
    """Rendered text with its whitespace collapsed, as a reader sees it."""
    return " ".join((text or "").split())


# --- the server ------------------------------------------------------------------------------


class Server:
    """`storywire serve --demo` on loopback ports, stopped by its PID.

    The first start takes free ports (`127.0.0.1:0`) and reads them from the log; a restart binds
    the same ones again, so the page's EventSource finds the server where it left it.
    """

    def __init__(self, binary, data_dir, work):
        self.binary = binary
        self.data_dir = data_dir
        self.work = work
        self.process = None
        self.grpc = "127.0.0.1:0"
        self.http = "127.0.0.1:0"
        self.starts = 0
        self.log_path = None

    def start(self):
        """Starts the server and waits until both listeners are logged; retries while the old
        ports are still held (a restart racing the kernel), until the deadline."""
        deadline = time.monotonic() + START_DEADLINE
        while True:
            self.starts += 1
            self.log_path = Path(self.work) / f"server-{self.starts}.log"
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary, "serve", "--demo", "--demo-interval", "3600",
                        "--data-dir", str(self.data_dir),
                        "--listen", self.grpc, "--http", self.http,
                    ],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )
            while time.monotonic() < deadline:
                text = self.log_path.read_text(errors="replace")
                grpc = re.search(r"storywire listening address=(\S+)", text)
                http = re.search(r"storywire HTTP listening address=(\S+)", text)
                if grpc and http:
                    self.grpc, self.http = grpc.group(1), http.group(1)
                    return
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                self.stop()
                raise CheckFailed(f"the server did not log both addresses within "
                                  f"{START_DEADLINE} s:\n{self.log()}")
            if "in use" not in self.log().lower() or time.monotonic() >= deadline:
                raise CheckFailed(f"the server exited with {self.process.returncode}:\n"
                                  f"{self.log()}")
            time.sleep(0.2)  # the old port is still held: try again, within the deadline

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within 10 s. Returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise CheckFailed("the server did not exit within 10 s of SIGTERM")

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def url(self, path):
        return f"http://{self.http}{path}"

    def get_json(self, path):
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return json.load(response)

    def get_text(self, path):
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return response.read().decode("utf-8")

    def story(self):
        return self.get_json(f"/v1/stories/{STORY_ID}")["story"]

    def story_events(self, story_id=STORY_ID):
        """Every event of the story so far, from the event stream read up to `caught_up`."""
        path = f"/v1/events?story={story_id}&from_sequence=1"
        events = []
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            name, data = None, []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[len("event:"):].strip()
                elif line.startswith("data:"):
                    data.append(line[len("data:"):].strip())
                elif line == "":
                    if name == "caught_up":
                        return events
                    if name is None and data:
                        events.append(json.loads("\n".join(data)))
                    name, data = None, []
        raise CheckFailed(f"the event stream ended before caught_up, after {len(events)} events")

    def publish(self, request):
        """Publishes one PublishRequest with the CLI over gRPC; returns its sequence."""
        path = Path(self.work) / f"{request['eventId']}.jsonl"
        path.write_text(json.dumps(request) + "\n")
        result = subprocess.run(
            [self.binary, "publish", "--server", f"http://{self.grpc}", "--json", str(path)],
            capture_output=True, text=True, timeout=30,
        )
        check(result.returncode == 0,
              f"publish exited {result.returncode}: {result.stdout}{result.stderr}")
        receipt = json.loads(result.stdout.strip().splitlines()[-1])
        check(not receipt.get("duplicate"), f"{request['eventId']} was a duplicate: {receipt}")
        return int(receipt["sequence"])


# --- the browser -----------------------------------------------------------------------------


def start_browser():
    options = Options()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    options.add_argument("--no-sandbox")  # root in a container: the sandbox cannot start
    options.add_argument("--disable-dev-shm-usage")  # a small /dev/shm crashes tabs
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(START_DEADLINE)
    driver.set_script_timeout(START_DEADLINE)
    return driver


def wait_for(driver, seconds, condition, what):
    """WebDriverWait with a message that says what did not happen."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise CheckFailed(f"{what} not within {seconds} s") from None


def fact_of(story, fact_id):
    """The fact `fact_id` of `story` (as the JSON has it), or {} when it has none."""
    return next((fact for fact in story.get("facts", []) if fact["id"] == fact_id), {})


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def live_state(driver):
    states = [e.get_attribute("data-state") for e in css(driver, "#live-state")]
    return states[0] if states else None


def wait_for_state(driver, seconds, *states):
    wait_for(driver, seconds, lambda d: live_state(d) in states,
             f"#live-state[data-state] in {states} (it is {live_state(driver)!r})")


def feed_sequences(driver):
    """The sequences in #updates, in document order (newest first, by the contract)."""
    return [int(e.get_attribute("data-sequence"))
            for e in css(driver, "#updates li.update")]


def wait_for_update(driver, sequence, headline):
    """The update's `li` appears within UPDATE_DEADLINE, once, with its headline and time."""
    selector = f'#updates li.update[data-sequence="{sequence}"]'
    wait_for(driver, UPDATE_DEADLINE, lambda d: css(d, selector), selector)
    items = css(driver, selector)
    check(len(items) == 1, f"{selector} appears {len(items)} times")
    shown = normalise(items[0].find_element(By.CSS_SELECTOR, ".update-headline").text)
    check(shown == headline, f"{selector} .update-headline is {shown!r}, not {headline!r}")
    check(items[0].find_elements(By.CSS_SELECTOR, "time"), f"{selector} has no <time>")


def attribution_shown(attribution, text):
    """Whether an `.attribution`'s text (lower-cased) names its source and stance in words.

    An anonymous source may be shown as "an unnamed source" instead of its name: the name of an
    anonymous source is the desk's description of it, and the page may word that its own way.
    """
    name = attribution["source"]["name"].lower()
    named = name in text or (attribution.get("anonymous") and "unnamed" in text)
    stance = attribution["stance"].removeprefix("STANCE_").replace("_", " ").lower()
    return named and stance in text


def mark_page(driver):
    """Sets a marker on `window` that a reload would wipe."""
    driver.execute_script("window.__storywireMarker = 1;")


def check_not_reloaded(driver):
    marker = driver.execute_script("return window.__storywireMarker;")
    check(marker == 1, "the page reloaded (the window marker is gone)")


def check_feed_order(driver):
    sequences = feed_sequences(driver)
    duplicates = sorted({s for s in sequences if sequences.count(s) > 1})
    check(not duplicates, f"sequences shown twice in #updates: {duplicates} (feed {sequences})")
    check(sequences == sorted(sequences, reverse=True),
          f"#updates is not newest first: {sequences}")


# --- JSON-LD ---------------------------------------------------------------------------------


class JsonLdScript(html.parser.HTMLParser):
    """Collects the text of `<script type="application/ld+json" id="jsonld">`."""

    def __init__(self):
        super().__init__()
        self.inside = False
        self.found = 0
        self.text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("id") == "jsonld":
            check(attrs.get("type") == "application/ld+json",
                  f"script#jsonld has type {attrs.get('type')!r}")
            self.inside = True
            self.found += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def server_rendered_jsonld(server):
    """The JSON-LD as the server sends it, read with no JavaScript at all."""
    parser = JsonLdScript()
    parser.feed(server.get_text(f"/stories/{STORY_ID}"))
    check(parser.found == 1, f"the page has {parser.found} script#jsonld, not 1")
    try:
        return json.loads(parser.text)
    except json.JSONDecodeError as error:
        raise CheckFailed(f"script#jsonld is not JSON: {error}: {parser.text[:300]!r}") from None


def check_jsonld(server, concluded):
    """The LiveBlogPosting matches the story: type, headline, coverage times, and exactly one
    BlogPosting per event of the story (compared by headline, as a multiset), each with a
    headline, datePublished and articleBody."""
    posting = server_rendered_jsonld(server)
    story = server.story()
    events = server.story_events()
    check(posting.get("@type") == "LiveBlogPosting",
          f"@type is {posting.get('@type')!r}, not LiveBlogPosting")
    check("schema.org" in str(posting.get("@context", "")),
          f"@context is {posting.get('@context')!r}")
    check(posting.get("headline") == story["headline"],
          f"headline {posting.get('headline')!r} is not the story's {story['headline']!r}")
    check(posting.get("coverageStartTime"), "no coverageStartTime")
    check(posting.get("inLanguage") == story.get("language"),
          f"inLanguage {posting.get('inLanguage')!r} is not the story's {story.get('language')!r}")
    if concluded:
        check(posting.get("coverageEndTime"), "a concluded story has no coverageEndTime")
    else:
        check("coverageEndTime" not in posting,
              f"a developing story has coverageEndTime {posting.get('coverageEndTime')!r}")
    updates = posting.get("liveBlogUpdate")
    check(isinstance(updates, list), f"liveBlogUpdate is {type(updates).__name__}, not a list")
    for update in updates:
        check(update.get("@type") == "BlogPosting", f"a liveBlogUpdate is {update.get('@type')!r}")
        for field in ("headline", "datePublished", "articleBody"):
            check(update.get(field), f"a BlogPosting has no {field}: {update}")
    shown = sorted(u["headline"] for u in updates)
    expected = sorted(e["headline"] for e in events)
    check(shown == expected,
          f"liveBlogUpdate headlines {shown} are not the story's {len(expected)} events' "
          f"{expected}")
    return len(updates)


# --- the updates this test publishes ---------------------------------------------------------

CORRECTION = {
    "storyId": STORY_ID,
    "eventId": "browser-test-001",
    "headline": "Correction: Jo is believed to be in a safe house with his wife",
    "change": {"factCorrected": {
        "factId": "safe-house",
        "statement": "Jo is believed to currently be in a safe house with his wife.",
        "reason": "The report said his wife, not his family.",
    }},
}
CONTEXT = {
    "storyId": STORY_ID,
    "eventId": "browser-test-002",
    "headline": "Background: about 30,000 North Koreans have defected to the South",
    "change": {"contextAdded": {
        "text": "About 30,000 North Koreans have defected to South Korea since the end of the "
                "1950-53 Korean War.",
        "attributions": [{"source": {"name": "South Korea's unification ministry",
                                     "kind": "SOURCE_KIND_ORGANIZATION"},
                          "stance": "STANCE_ASSERTS"}],
    }},
}
CONCLUSION = {
    "storyId": STORY_ID,
    "eventId": "browser-test-003",
    "headline": "The desk concludes its live coverage",
    "change": {"storyStatusChanged": {"status": "STORY_STATUS_CONCLUDED",
                                      "reason": "No further developments expected."}},
}


def checker(results):
    """A `step(name, function)` that runs one check, prints ok or FAILED with why, and appends
    the outcome to `results`: a broken check must not hide the ones after it."""
    def step(name, function):
        try:
            function()
            results.append(True)
            print(f"ok: {name}", flush=True)
        except Exception as error:
            results.append(False)
            detail = str(error) if isinstance(error, CheckFailed) else traceback.format_exc()
            print(f"FAILED: {name}: {detail}", flush=True)
    return step


def clean_up(results, driver, server, work):
    """Stops the browser and the server by their PIDs and removes `work`, however the run ended;
    a server that does not stop cleanly is a failure, and any failure prints the server's log."""
    if driver is not None:
        driver.quit()
    try:
        server.stop()
    except CheckFailed as error:
        results.append(False)
        print(f"FAILED: stopping the server: {error}")
    if not all(results):
        print(f"--- server log ({server.log_path})\n{server.log()}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


def report(label, results):
    """Prints `label: N passed, M failed` (the line scripts/browser-test and CI read) and returns
    the exit status."""
    passed, failed = results.count(True), results.count(False)
    print(f"{label}: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


# --- the checks, in the order a reader meets them ---------------------------------------------


def run(binary):
    work = tempfile.mkdtemp(prefix="storywire-browser-")
    server = Server(binary, Path(work) / "data", work)
    driver = None
    results = []
    seen = {}  # what earlier checks learnt, for later ones

    step = checker(results)

    try:
        server.start()
        driver = start_browser()

        def index_links_the_story():
            driver.get(server.url("/"))
            selector = f'a.story-link[href="/stories/{STORY_ID}"]'
            links = wait_for(driver, START_DEADLINE, lambda d: css(d, selector), selector)
            links[0].click()
            wait_for(driver, START_DEADLINE,
                     lambda d: d.current_url.endswith(f"/stories/{STORY_ID}") and
                     css(d, "h1#headline"), "the story page after clicking its link")

        def page_shows_the_story_as_the_json_has_it():
            driver.get(server.url(f"/stories/{STORY_ID}"))
            story = server.story()
            wait_for(driver, START_DEADLINE, lambda d: css(d, "#facts li.fact"), "#facts li.fact")
            headline = normalise(css(driver, "h1#headline")[0].text)
            check(headline == story["headline"],
                  f"h1#headline is {headline!r}, not {story['headline']!r}")
            status = normalise(css(driver, "#story-status")[0].text).upper()
            check("DEVELOPING" in status, f"#story-status is {status!r}, not DEVELOPING")
            tags = normalise(css(driver, "#tags")[0].text)
            missing_tags = [t for t in story["tags"] if t not in tags]
            check(not missing_tags, f"#tags {tags!r} lacks {missing_tags}")
            shown = {e.get_attribute("data-fact-id"): e for e in css(driver, "#facts li.fact")}
            expected = {f["id"]: f for f in story["facts"]}
            check(set(shown) == set(expected),
                  f"the page's facts {sorted(shown)} are not the story's {sorted(expected)}")
            for fact_id, fact in expected.items():
                item = shown[fact_id]
                statement = normalise(item.find_element(By.CSS_SELECTOR, ".statement").text)
                check(statement == fact["statement"],
                      f"fact {fact_id}: .statement {statement!r} is not {fact['statement']!r}")
                check(normalise(item.find_element(By.CSS_SELECTOR, ".fact-status").text),
                      f"fact {fact_id}: .fact-status is empty")
                attributions = [normalise(a.text).lower() for a in
                                item.find_elements(By.CSS_SELECTOR, ".attribution")]
                check(len(attributions) == len(fact["attributions"]),
                      f"fact {fact_id}: {len(attributions)} .attribution, not "
                      f"{len(fact['attributions'])}")
                for attribution, shown_text in zip(fact["attributions"], attributions):
                    check(attribution_shown(attribution, shown_text),
                          f"fact {fact_id}: .attribution {shown_text!r} does not give the "
                          f"source and stance of {attribution}")

        def page_goes_live():
            wait_for_state(driver, START_DEADLINE, "live")

        def published_update_appears_without_reload():
            mark_page(driver)
            sequence = server.publish(CORRECTION)
            seen["correction"] = sequence
            wait_for_update(driver, sequence, CORRECTION["headline"])
            check_not_reloaded(driver)
            check_feed_order(driver)

        def correction_shows_inside_its_fact():
            fact = CORRECTION["change"]["factCorrected"]
            selector = f'#facts li.fact[data-fact-id="{fact["factId"]}"]'
            wait_for(driver, UPDATE_DEADLINE,
                     lambda d: css(d, f"{selector} .correction") and normalise(
                         css(d, f"{selector} .statement")[0].text) == fact["statement"],
                     f"{selector} with .correction and the corrected .statement")
            # The correction says what the fact read before, from the story's own history.
            earlier = [revision["statement"]["from"]
                       for revision in fact_of(server.story(), fact["factId"]).get("history", [])
                       if "statement" in revision]
            shown = normalise(css(driver, f"{selector} .correction")[-1].text)
            check(earlier and normalise(earlier[-1]) in shown and fact["reason"] in shown,
                  f"{selector} .correction {shown!r} does not give the earlier wording "
                  f"{earlier!r} and the reason")
            by = css(driver, f'#updates li.update[data-sequence="{seen["correction"]}"] .update-by')
            check(by and normalise(by[0].text) == "by anonymous",
                  f"the correction's update does not say who published it: {by and by[0].text!r}")
            check_not_reloaded(driver)

        def jsonld_matches_the_story_while_developing():
            seen["jsonld_updates"] = check_jsonld(server, concluded=False)

        def page_notices_the_server_stopping():
            status = server.stop()
            check(status == 0, f"the server exited {status} on SIGTERM")
            wait_for_state(driver, RECONNECT_DEADLINE, "reconnecting", "connecting")
            check_not_reloaded(driver)

        def page_reconnects_to_the_restarted_server():
            server.start()
            wait_for_state(driver, RECONNECT_DEADLINE, "live")
            check_not_reloaded(driver)

        def next_update_shows_exactly_once_after_restart():
            sequence = server.publish(CONTEXT)
            check(sequence == seen["correction"] + 1,
                  f"the restarted server gave sequence {sequence} after {seen['correction']}")
            wait_for_update(driver, sequence, CONTEXT["headline"])
            text = CONTEXT["change"]["contextAdded"]["text"]
            wait_for(driver, UPDATE_DEADLINE,
                     lambda d: any(text in normalise(e.text) for e in css(d, "#context li")),
                     "#context li with the new background")
            earlier = css(driver, f'#updates li.update[data-sequence="{seen["correction"]}"]')
            check(len(earlier) == 1,
                  f"the update before the restart now appears {len(earlier)} times")
            check_feed_order(driver)
            check_not_reloaded(driver)

        def screenshot_is_not_blank():
            out = REPO / "target" / "browser"
            out.mkdir(parents=True, exist_ok=True)
            path = out / "live-page.png"
            check(driver.save_screenshot(str(path)), "save_screenshot failed")
            with Image.open(path) as image:
                colours = image.convert("RGB").getcolors(maxcolors=image.width * image.height)
            check(len(colours) > MIN_SCREENSHOT_COLOURS,
                  f"the screenshot has {len(colours)} colours; a blank page has a handful")
            copy_to = os.environ.get("STORYWIRE_SCREENSHOT_OUT")
            if copy_to:
                shutil.copyfile(path, copy_to)
                print(f"screenshot written to {copy_to}")

        def concluded_story_ends_the_live_state():
            sequence = server.publish(CONCLUSION)
            wait_for_update(driver, sequence, CONCLUSION["headline"])
            wait_for_state(driver, UPDATE_DEADLINE, "ended")
            wait_for(driver, UPDATE_DEADLINE,
                     lambda d: "CONCLUDED" in normalise(css(d, "#story-status")[0].text).upper(),
                     "#story-status CONCLUDED")
            check_feed_order(driver)
            check_not_reloaded(driver)

        def jsonld_has_coverage_end_once_concluded():
            updates = check_jsonld(server, concluded=True)
            check(updates == seen.get("jsonld_updates", 0) + 2,
                  f"{updates} BlogPostings after two more events, not "
                  f"{seen.get('jsonld_updates', 0) + 2}")

        step("/ links the story and the link opens its page", index_links_the_story)
        step("the page shows the story's headline, status, tags and facts as GET /v1/stories has "
             "them", page_shows_the_story_as_the_json_has_it)
        step("#live-state becomes live", page_goes_live)
        step(f"an update published over gRPC appears within {UPDATE_DEADLINE} s, no reload",
             published_update_appears_without_reload)
        step("the correction shows inside its fact, with the corrected statement",
             correction_shows_inside_its_fact)
        step("the JSON-LD (no JavaScript) is a LiveBlogPosting of every event so far",
             jsonld_matches_the_story_while_developing)
        step("after SIGTERM the page says it is reconnecting", page_notices_the_server_stopping)
        step("the page reconnects by itself to the restarted server",
             page_reconnects_to_the_restarted_server)
        step("the next update appears exactly once after the restart",
             next_update_shows_exactly_once_after_restart)
        step("the screenshot is not blank", screenshot_is_not_blank)
        step("concluding the story shows CONCLUDED and ends the live state",
             concluded_story_ends_the_live_state)
        step("the JSON-LD of a concluded story has coverageEndTime and every event",
             jsonld_has_coverage_end_once_concluded)
    except Exception:
        results.append(False)
        print(f"FAILED: setting up: {traceback.format_exc()}", flush=True)
    finally:
        clean_up(results, driver, server, work)
    return report("browser", results)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: live_page.py path/to/storywire")
    # A SIGTERM (a CI timeout, a `kill`) unwinds through run()'s finally, which stops the server
    # and the browser by their PIDs instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(run(os.path.abspath(sys.argv[1])))
