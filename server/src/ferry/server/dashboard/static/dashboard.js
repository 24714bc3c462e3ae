// Ferry dashboard: live rollout updates over server-sent events. No framework, no build.
// The server renders the live fragment (escaped by Jinja); this script only swaps it in.
(function () {
  "use strict";
  function follow(live) {
    var url = live.getAttribute("data-events");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("live", function (event) {
      live.innerHTML = event.data;
      live.setAttribute("data-updated", String(Date.now()));
    });
    source.addEventListener("signed-out", function () {
      source.close();
      window.location.assign("/ui/login");
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) { follow(live); }
  });
})();
