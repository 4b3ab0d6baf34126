// Live refresh of the dashboard: every 2 s, the server renders this view again
// (`fragment=1` answers only what goes inside <main>) and it replaces what is shown.
// Nothing is built here from data: the server escapes everything it renders.
(function () {
  "use strict";
  var main = document.getElementById("view");
  var stamp = document.getElementById("updated");
  if (!main || !stamp) {
    return;
  }
  var busy = false;

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("done");
    url.searchParams.delete("error");
    return url;
  }

  async function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    try {
      var response = await fetch(fragmentUrl(), { credentials: "same-origin" });
      if (response.status === 401) {
        // The session ended: the page itself shows the login form.
        window.location.reload();
        return;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      var doc = new DOMParser().parseFromString(await response.text(), "text/html");
      main.replaceChildren.apply(main, Array.from(doc.body.childNodes));
      stamp.textContent = "updated " + new Date().toLocaleTimeString();
      stamp.className = "";
    } catch (e) {
      stamp.textContent = "refresh failed (" + e.message + "), retrying";
      stamp.className = "stale";
    } finally {
      busy = false;
    }
  }

  window.setInterval(refresh, 2000);
})();
