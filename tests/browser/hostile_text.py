"""Published text cannot change how the live page parses: headless Chromium against a real
`storywire serve`, with a story whose every free-text field holds text that would end or swallow
a `<script>` block, or run a script, if the server wrote it raw.

It publishes (over gRPC, with the CLI) a story whose headline, summary, event headlines, fact
statement, source name and role, hedge, quote, anonymity reason, note, background, correction
reason and status reason all carry HOSTILE, then checks that:

- the page renders: `h1#headline` and `#summary` show the text as written, every fact is in
  `#facts`, every event in `#updates`, and `#live-state` becomes `live`;
- the JSON-LD parses, in the browser (`JSON.parse` of `script#jsonld`) and as the server sends it,
  and equals the API's story: headline, description, keywords, and one BlogPosting per event with
  the event's headline;
- the live feed still works: a further hostile update appears within 2 s, without a reload;
- no script from the text ran (`window.__storywirePwned` stays unset).

Each check prints `ok:` or `FAILED:`; the last line is `hostile text: N passed, M failed`.

Usage: python tests/browser/hostile_text.py path/to/storywire
"""

import json
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from live_page import (
    START_DEADLINE, UPDATE_DEADLINE, JsonLdScript, Server, check, checker, clean_up, css,
    normalise, report, start_browser, wait_for, wait_for_state,
)

STORY_ID = "hostile-text"

# A comment opener and a script tag with no `-->` after them (the pair that makes the HTML parser
# swallow the rest of the document), a closing script tag, markup that would run a script if it were parsed as HTML,
# an ampersand, and the two line separators older JavaScript ends a line at.
HOSTILE = ('<!--<script> </script> <img src=x onerror="window.__storywirePwned=1"> '
           "&\u2028\u2029 end")


def hostile(label):
    return f"{label} {HOSTILE}"


def attribution(label):
    return {
        "source": {"name": hostile(f"{label} source"), "kind": "SOURCE_KIND_PERSON",
                   "role": hostile(f"{label} role")},
        "stance": "STANCE_ASSERTS",
        "hedge": hostile(f"{label} hedge"),
        "quote": hostile(f"{label} quote"),
    }


def requests():
    """The story's publishes, in order: every free-text field carries HOSTILE."""
    def request(n, headline, change):
        return {"storyId": STORY_ID, "eventId": f"hostile-{n:03}", "headline": hostile(headline),
                "change": change}
    anonymous = attribution("anonymous")
    anonymous["anonymous"] = True
    anonymous["anonymityReason"] = hostile("anonymity reason")
    return [
        request(1, "Opened", {"storyOpened": {
            "headline": hostile("Headline"), "summary": hostile("Summary"),
            "tags": ["hostile"], "language": "en"}}),
        request(2, "Reported", {"factReported": {
            "factId": "f1", "statement": hostile("Statement"),
            "attributions": [attribution("named"), anonymous]}}),
        request(3, "Disputed", {"factStatusChanged": {
            "factId": "f1", "status": "FACT_STATUS_DISPUTED",
            "attributions": [attribution("disputing")], "note": hostile("Note")}}),
        request(4, "Background", {"contextAdded": {
            "text": hostile("Background"), "attributions": [attribution("context")]}}),
        request(5, "Corrected", {"factCorrected": {
            "factId": "f1", "statement": hostile("Corrected statement"),
            "reason": hostile("Correction reason")}}),
    ]


LIVE_UPDATE = {
    "storyId": STORY_ID, "eventId": "hostile-live", "headline": hostile("Live"),
    "change": {"contextAdded": {"text": hostile("Live background")}},
}


def check_posting(posting, story, events, where):
    """The LiveBlogPosting equals the API's story and events."""
    for key, expected in (("headline", story["headline"]), ("description", story["summary"]),
                          ("keywords", story.get("tags", [])),
                          ("inLanguage", story.get("language"))):
        check(posting.get(key) == expected,
              f"{where}: {key} {posting.get(key)!r} is not the API's {expected!r}")
    shown = sorted(update.get("headline") for update in posting.get("liveBlogUpdate", []))
    expected = sorted(event["headline"] for event in events)
    check(shown == expected, f"{where}: liveBlogUpdate headlines {shown} are not {expected}")


def run(binary):
    work = tempfile.mkdtemp(prefix="storywire-hostile-")
    server = Server(binary, Path(work) / "data", work)
    driver = None
    results = []

    step = checker(results)

    try:
        server.start()
        for request in requests():
            server.publish(request)
        driver = start_browser()

        def page_renders_the_text_as_written():
            driver.get(server.url(f"/stories/{STORY_ID}"))
            story = server.get_json(f"/v1/stories/{STORY_ID}")["story"]
            wait_for(driver, START_DEADLINE, lambda d: css(d, "#facts li.fact"), "#facts li.fact")
            for selector, expected in (("h1#headline", story["headline"]),
                                       ("#summary", story["summary"])):
                shown = normalise(css(driver, selector)[0].text)
                check(shown == normalise(expected), f"{selector} is {shown!r}, not {expected!r}")
            statement = normalise(css(driver, "#facts li.fact .statement")[0].text)
            check(statement == normalise(story["facts"][0]["statement"]),
                  f".statement is {statement!r}")
            wait_for(driver, START_DEADLINE,
                     lambda d: len(css(d, "#updates li.update")) == len(requests()),
                     f"{len(requests())} updates in #updates")
            wait_for_state(driver, START_DEADLINE, "live")

        def jsonld_parses_in_the_browser_and_equals_the_story():
            text = driver.execute_script(
                "const s = document.getElementById('jsonld'); return s && s.textContent;")
            check(text, "the page has no script#jsonld")
            posting = driver.execute_script("return JSON.parse(arguments[0]);", text)
            check_posting(posting, server.get_json(f"/v1/stories/{STORY_ID}")["story"],
                          server.story_events(STORY_ID), "in the browser")

        def jsonld_as_sent_equals_the_story():
            parser = JsonLdScript()
            parser.feed(server.get_text(f"/stories/{STORY_ID}"))
            check(parser.found == 1, f"the page has {parser.found} script#jsonld, not 1")
            check(not any(c in parser.text for c in "<>&\u2028\u2029"),
                  f"script#jsonld carries raw markup characters: {parser.text[:200]!r}")
            check_posting(json.loads(parser.text),
                          server.get_json(f"/v1/stories/{STORY_ID}")["story"],
                          server.story_events(STORY_ID), "as sent")

        def live_feed_shows_a_hostile_update():
            driver.execute_script("window.__storywireMarker = 1;")
            sequence = server.publish(LIVE_UPDATE)
            selector = f'#updates li.update[data-sequence="{sequence}"]'
            wait_for(driver, UPDATE_DEADLINE, lambda d: css(d, selector), selector)
            shown = normalise(css(driver, f"{selector} .update-headline")[0].text)
            check(shown == normalise(LIVE_UPDATE["headline"]), f"{selector} shows {shown!r}")
            check(driver.execute_script("return window.__storywireMarker;") == 1,
                  "the page reloaded")

        def no_script_from_the_text_ran():
            pwned = driver.execute_script("return window.__storywirePwned;")
            check(pwned is None, f"a script from published text ran: {pwned!r}")

        step("the page renders hostile text as written, facts, feed and live state",
             page_renders_the_text_as_written)
        step("the JSON-LD parses in the browser and equals the API's story",
             jsonld_parses_in_the_browser_and_equals_the_story)
        step("the JSON-LD as sent has no raw <, >, &, U+2028, U+2029 and equals the story",
             jsonld_as_sent_equals_the_story)
        step(f"a hostile update appears live within {UPDATE_DEADLINE} s",
             live_feed_shows_a_hostile_update)
        step("no script from published text ran", no_script_from_the_text_ran)
    except Exception:
        results.append(False)
        print(f"FAILED: setting up: {traceback.format_exc()}", flush=True)
    finally:
        clean_up(results, driver, server, work)
    return report("hostile text", results)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: hostile_text.py path/to/storywire")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(run(os.path.abspath(sys.argv[1])))
