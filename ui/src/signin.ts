// The token prompt, shown in place of a page when the server answers 401: an "Access token"
// password field checked against the server before it is stored (auth.ts). The server's
// messages are shown as text.

import * as api from "./api";
import { storeToken } from "./auth";
import { h } from "./dom";
import type { Page } from "./main";

export class SignInPage implements Page {
  readonly el: HTMLElement;
  private readonly input = h("input", {
    id: "access-token",
    type: "password",
    name: "token",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "signin-message",
    "data-testid": "token-input",
  });
  private readonly message = h("p", { id: "signin-message", class: "status", role: "alert", "data-testid": "signin-message" });
  private readonly submitButton = h("button", { type: "submit", class: "primary", "data-testid": "token-submit" }, "Sign in");
  private disposed = false;

  /** `onSignedIn` runs once a token the server accepts is stored. */
  constructor(
    serverMessage: string,
    refused: boolean,
    private readonly onSignedIn: () => void,
  ) {
    this.el = h(
      "div",
      { class: "message" },
      h(
        "section",
        { class: "panel signin", "aria-labelledby": "signin-title", "data-testid": "signin" },
        h("h2", { id: "signin-title" }, "Access token required"),
        h(
          "p",
          { class: "hint" },
          "This meshtrace server only answers requests that carry a token. Enter one with the read scope " +
            "(admin to change overrides); it is kept in this browser until you forget it.",
        ),
        h(
          "form",
          { class: "signin-form", onsubmit: (e: Event) => void this.submit(e) },
          h("label", { class: "field" }, h("span", null, "Access token"), this.input),
          this.message,
          this.submitButton,
        ),
      ),
    );
    this.show(refused ? `The stored token was refused: ${serverMessage}` : serverMessage, refused);
  }

  /** Another 401 while the prompt is up (e.g. from a request of the page it replaced). */
  update(serverMessage: string, refused: boolean): void {
    if (refused) this.show(`The stored token was refused: ${serverMessage}`, true);
  }

  focus(): void {
    this.input.focus();
  }

  dispose(): void {
    this.disposed = true;
  }

  private show(text: string, error: boolean): void {
    this.message.textContent = text;
    this.message.classList.toggle("error", error);
    if (error) this.input.setAttribute("aria-invalid", "true");
    else this.input.removeAttribute("aria-invalid");
  }

  private async submit(e: Event): Promise<void> {
    e.preventDefault();
    const token = this.input.value.trim();
    if (!token) return;
    // An HTTP header carries printable ASCII only (fetch would throw on anything else).
    if (!/^[\x21-\x7e]+$/.test(token)) return this.show("A token is printable ASCII without spaces.", true);
    this.submitButton.disabled = true;
    this.show("Checking…", false);
    try {
      await api.checkToken(token);
      if (this.disposed) return;
      storeToken(token);
      this.onSignedIn();
    } catch (err) {
      if (this.disposed) return;
      this.show(err instanceof Error ? err.message : String(err), true);
      this.input.select();
      this.input.focus();
    } finally {
      this.submitButton.disabled = false;
    }
  }
}
