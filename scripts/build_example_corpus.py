"""Build the bundled example corpus: support articles for Lumora, a fictional smart-lighting system.

Each article combines a topic's own hand-written steps and facts with varied openings, product
models and closing notes, so the corpus has one coherent domain vocabulary without exact copies.
Run from the repository root: python scripts/build_example_corpus.py
"""

import json
import random
from pathlib import Path

PRODUCTS = ["Lumora Hub", "Lumora Hub Mini", "Lumora Hub Pro"]
BULBS = ["Lumora A19 bulb", "Lumora Spot GU10", "Lumora Strip 2m", "Lumora Filament bulb", "Lumora Candle E14"]
APP = "Lumora app"

TOPICS = [
    ("Pair a new bulb with the {hub}", "New bulbs join the {hub} over Lumora Link, the low-power mesh that every Lumora light speaks.",
     ["Screw in the {bulb} and switch the wall switch on.", "Open the {app} and tap the plus sign on the Rooms screen.",
      "Choose Add light and keep the phone within three metres of the {hub}.", "Wait for the bulb to blink twice; this means it has joined the mesh.",
      "Give the light a name and put it in a room.", "Tap Done; the light now answers to scenes and schedules."],
     ["A bulb that blinks five times is still bound to another hub; reset it first.", "Pairing several bulbs at once works, but the {app} names them Light 1, Light 2 and so on."]),
    ("Reset a bulb to factory settings", "A reset clears the bulb's room, scenes and mesh key so that it can join a different {hub}.",
     ["Switch the {bulb} off at the wall for five seconds.", "Switch it on and off five times, leaving about one second between each switch.",
      "Leave it on: the bulb pulses warm white three times to confirm the reset.", "Remove the old light from the {app} if it is still listed.",
      "Pair the bulb again from the Rooms screen."],
     ["Smart switches that cut power slowly can miss the rhythm; use a plain switch or the breaker.", "The reset does not change the firmware version."]),
    ("The {hub} status light explained", "The ring on top of the {hub} tells you what the hub is doing without opening the {app}.",
     ["Solid white means the hub is online and the mesh is healthy.", "Slow amber breathing means the hub is starting up or installing an update.",
      "Fast amber blinking means the hub has lost its Wi-Fi network.", "Solid red means the hub cannot reach the Lumora cloud; local control still works.",
      "Blue means the hub is waiting to be set up."],
     ["You can dim the ring at night under Hub settings, Status light.", "The ring turns purple for a moment when a backup finishes."]),
    ("Connect the {hub} to a new Wi-Fi network", "After a router change the {hub} keeps its lights and scenes but needs the new network details.",
     ["Press and hold the button on the back of the {hub} for three seconds until the ring turns blue.", "In the {app}, open Hub settings and tap Change network.",
      "Choose the new network and type its password.", "Wait up to two minutes while the ring breathes amber.", "When the ring is solid white, test a scene."],
     ["The {hub} uses the 2.4 GHz band; a router that only offers 5 GHz will not be found.", "Network names with emoji are supported since firmware 4.2."]),
    ("Create a scene", "A scene stores the colour and brightness of several lights so that one tap sets a whole room.",
     ["Set each light the way you want it, from the {app} or with a dimmer.", "Open the room and tap Save as scene.", "Pick an icon and a name such as Reading or Dinner.",
      "Choose whether the scene should fade in over a few seconds.", "Tap Save; the scene appears on the room card and in the widget."],
     ["Scenes run on the {hub} itself, so they still work when the internet is down.", "A scene can include lights from more than one room."]),
    ("Set a schedule", "Schedules turn lights on, off or to a scene at fixed times or at sunrise and sunset.",
     ["Open the Automations tab in the {app}.", "Tap New schedule and pick the days of the week.", "Choose a time, or choose Sunset and an offset in minutes.",
      "Select the lights or the scene to run.", "Turn on Randomize by 15 minutes if you want the home to look lived in while you travel."],
     ["Sunrise and sunset follow the location set in Home settings.", "A schedule that conflicts with a motion rule waits until the motion rule ends."]),
    ("Wake-up light", "The Wake-up automation raises the brightness slowly before your alarm, like a sunrise in the bedroom.",
     ["Open Automations and tap Wake-up.", "Set the time you want the light to reach full brightness.", "Choose a fade length between ten and forty-five minutes.",
      "Pick the bedroom lights; colour bulbs start at a deep orange.", "Save, and the wake-up runs on the chosen days."],
     ["Filament bulbs fade from 2% rather than 1% because of their driver.", "Pressing any dimmer button stops the wake-up for that morning."]),
    ("Update firmware", "Firmware updates bring fixes for the {hub} and for every light on the mesh.",
     ["Open Hub settings and tap Firmware.", "If an update is listed, tap Install now, or let the {hub} install it at 3 a.m.",
      "Keep the lights powered during the update; the ring breathes amber.", "Bulbs update one at a time and blink once when done.", "Check the release notes under Firmware history."],
     ["An update of twenty bulbs can take an hour because the mesh is slow by design.", "Switching a bulb off during its update is safe; it retries later."]),
    ("Lights do not respond", "When a light stops answering, the problem is usually power, distance or interference.",
     ["Check that the wall switch is on; a switched-off bulb cannot hear the mesh.", "Look at the {hub} ring: solid white means the hub is fine.",
      "Move the {hub} to a central spot, away from microwaves and metal cabinets.", "Add a mains-powered Lumora light between distant rooms to extend the mesh.",
      "Power-cycle the light at the wall.", "If nothing helps, reset the light and pair it again."],
     ["Battery dimmers do not repeat mesh traffic; only mains-powered lights do.", "The Mesh map in the {app} shows weak links in orange."]),
    ("Lights turn on by themselves after a power cut", "By default Lumora lights come back on at full brightness when power returns, like an ordinary bulb.",
     ["Open the light's settings in the {app}.", "Tap Power-on behaviour.", "Choose Last state, Off, or Full brightness.", "Repeat for each light, or use Apply to room."],
     ["Last state needs firmware 3.8 or newer on the bulb.", "Outdoor lights often keep Full brightness so that they work as plain lamps."]),
    ("Use the Lumora Dimmer", "The Lumora Dimmer is a battery remote with four buttons that sticks to any wall or stands on a table.",
     ["Pull the plastic tab out of the battery compartment.", "In the {app}, tap the plus sign and choose Add accessory.", "Hold the top and bottom buttons together for three seconds.",
      "Assign the dimmer to a room.", "Choose what a long press does: dim, change colour temperature, or run a scene."],
     ["The CR2032 battery lasts about two years.", "The magnetic plate fits over a standard switch box."]),
    ("Motion sensor rules", "The Lumora Motion sensor turns lights on when someone walks in and off again when the room is empty.",
     ["Place the sensor about two metres high, facing the doorway.", "Add it from the {app} like any accessory.", "Choose the lights it controls.",
      "Set a timeout between one and thirty minutes.", "Set a daylight threshold so the lights stay off when the room is bright."],
     ["Pets under 20 kg are ignored when Pet mode is on.", "At night the sensor can choose a dim scene instead of full light."]),
    ("Share your home with family", "Everyone in the household can control the lights from their own phone with their own account.",
     ["Open Home settings and tap Members.", "Tap Invite and enter the person's e-mail address.", "Choose Member or Admin; only admins can add devices.",
      "The person accepts the invitation in their own {app}."],
     ["Guests can use a temporary link that expires after a set number of days.", "Removing a member does not change any scenes they created."]),
    ("Voice assistants", "The {hub} works with common voice assistants, so you can say the room and the scene by name.",
     ["Open Home settings and tap Voice and integrations.", "Pick your assistant and sign in to its account.", "Allow it to see your rooms and scenes.",
      "Ask the assistant to discover devices.", "Try a command such as turn the living room to Reading."],
     ["Names with numbers are easier to say as words: Bedroom Two rather than Bedroom 2.", "Scenes appear to the assistant as switches that only turn on."]),
    ("Colour and white settings", "Colour bulbs show sixteen million colours; every bulb shows white from warm 2200 K to cool 6500 K.",
     ["Tap a light to open its controls.", "Switch between the Colour wheel and the White slider.", "Drag to choose, then lift your finger to apply.",
      "Tap the heart to store the colour as a favourite."],
     ["Filament bulbs are white only, from 2200 K to 4000 K.", "Natural light mode follows the sun's colour temperature through the day."]),
    ("Outdoor lights and weather", "Lumora outdoor lights are rated IP65 and work between -20 and 45 degrees Celsius.",
     ["Mount the light away from direct rain where possible.", "Use the supplied weatherproof connector for the cable.", "Pair the light before mounting it high up.",
      "Set Power-on behaviour to Full brightness if the light is also on a switch."],
     ["Condensation inside the cover in the first days is normal and clears.", "Very cold nights slow the colour change but not the brightness."]),
    ("Energy use", "The {app} estimates energy from each light's brightness and the hours it was on.",
     ["Open the Energy tab.", "Pick a room or the whole home.", "Choose Day, Week or Month.", "Set your electricity price per kilowatt-hour for a cost estimate."],
     ["An A19 bulb at full brightness draws 9 W; in standby it draws under 0.3 W.", "Estimates are within about 10% of a plug-in meter reading."]),
    ("Back up and restore the {hub}", "A backup keeps rooms, scenes, automations and accessory pairings, so a replacement hub starts where the old one stopped.",
     ["Open Hub settings and tap Backup.", "Turn on Automatic backup, which runs every night.", "To restore, set up the new {hub} and choose Restore from backup.",
      "Pick the most recent backup and wait for the ring to turn solid white.", "Lights rejoin the new hub on their own within ten minutes."],
     ["Backups are encrypted with a key that never leaves your account.", "A backup from a Pro hub restores to a Mini if the light count fits."]),
    ("Local control without the internet", "The {hub} keeps lights, scenes, schedules and the dimmers working during an internet outage.",
     ["Keep your phone on the same Wi-Fi network as the {hub}.", "The {app} switches to Local mode and shows a small house icon.",
      "Remote access, voice assistants and backups pause until the internet returns."],
     ["Local mode uses an encrypted connection on your network.", "The {hub} keeps its clock from the router; a router without time can shift schedules."]),
    ("Light strips: cutting and joining", "The Lumora Strip can be cut at the marks every 10 cm and joined with the Lumora Connector.",
     ["Unplug the strip before cutting.", "Cut only on the scissors mark between the copper pads.", "Slide the cut end into the connector until it clicks.",
      "Peel the backing and press the strip onto a clean, dry surface.", "Recalibrate the length in the {app} under Strip settings."],
     ["One power supply drives up to 10 m of strip.", "A cut piece without the controller cannot be used on its own."]),
    ("Hub Mini and Hub Pro compared", "The Hub Mini suits flats; the Hub Pro suits larger homes and many accessories.",
     ["The Hub Mini controls up to 50 lights and 12 accessories.", "The Hub Pro controls up to 200 lights and 50 accessories.",
      "The Hub Pro has an Ethernet port and a backup battery that lasts two hours.", "Both run the same scenes, schedules and integrations."],
     ["Moving from a Mini to a Pro is a backup and a restore.", "Two hubs in one home can share scenes through Home settings."]),
    ("Holiday mode", "Holiday mode makes the home look occupied by replaying your usual lighting with small random changes.",
     ["Open Automations and tap Holiday mode.", "Choose the dates you will be away.", "Pick which rooms take part.", "The {hub} learns from the last two weeks of use and replays a similar pattern."],
     ["Holiday mode pauses motion rules in the chosen rooms.", "You get a notification when it starts and when it ends."]),
    ("Accessibility features", "The {app} supports screen readers, large text and high-contrast colours.",
     ["Turn on your phone's screen reader; every control in the {app} has a spoken label.", "Use Large controls under App settings for bigger buttons.",
      "Turn on Flash to confirm, which blinks a light once when a scene is set."],
     ["The Lumora Dimmer has raised dots on the top button.", "Voice assistants give hands-free control of every scene."]),
    ("Warranty and returns", "Every Lumora product carries a two-year warranty; the Hub Pro carries three years.",
     ["Find the serial number in the {app} under the device's settings, or on the label.", "Open Help and tap Start a claim.",
      "Describe the problem and attach a photo if the product is damaged.", "Lumora support replies within two working days with a replacement or a return label."],
     ["Returns within 30 days of purchase need no reason.", "Keep the receipt: it proves the date of purchase."]),
    ("Flickering lights", "Flicker usually comes from an old wall dimmer or a loose fitting, not from the bulb itself.",
     ["Replace any wall dimmer in the circuit with a plain switch or a Lumora Dimmer.", "Check that the bulb is screwed in firmly.",
      "Lower the bulb's Minimum brightness setting in the {app}.", "Update the bulb's firmware."],
     ["Some LED drivers hum at very low brightness; raising the minimum to 5% stops it.", "Flicker only on video is a camera effect, not a fault."]),
    ("Rooms and zones", "Rooms group lights by place; zones group lights across rooms, such as Downstairs or Garden path.",
     ["Open the Rooms screen and tap Edit.", "Drag lights between rooms.", "Tap New zone and choose lights from any room.", "Zones appear as cards with their own scenes."],
     ["A light can be in one room but many zones.", "Voice assistants see zones as groups."]),
    ("Notifications", "The {app} can tell you when something in the home changes.",
     ["Open App settings and tap Notifications.", "Choose alerts for motion, offline devices, updates or low batteries.", "Set quiet hours when alerts stay silent."],
     ["Offline alerts wait five minutes to avoid noise from brief power cuts.", "Low battery alerts come at 15% and again at 5%."]),
    ("Move the {hub} to another room", "Moving the {hub} changes how the mesh reaches distant lights; a central spot works best.",
     ["Unplug the {hub} and plug it in at the new place.", "Wait for the ring to turn solid white.", "Open the Mesh map to check the links.",
      "Give the mesh about fifteen minutes to settle."],
     ["Keep the {hub} at least a metre from the Wi-Fi router.", "Shelves are better than floors: the mesh travels best at chest height."]),
    ("Delete your account and data", "You can delete your Lumora account and everything stored with it at any time.",
     ["Reset the {hub} first so that it can be given or sold.", "Open App settings, Account, and tap Delete account.", "Confirm with your password.",
      "Lumora removes backups, energy history and logs within 30 days."],
     ["Lights keep working as plain bulbs after the account is gone.", "Download your data first under Account, Export."]),
    ("Sync lights with music and films", "Entertainment mode lets colour lights follow the music or the picture on your screen.",
     ["Open the Entertainment tab and create an area.", "Pick up to ten colour lights near the screen or the speakers.", "Choose Music or Video and a strength from Subtle to Intense.",
      "Start the sync from the {app} or the Lumora desktop companion."],
     ["Entertainment mode needs a Hub Pro for more than four lights.", "Turn on Photosensitivity limit to cap fast flashes."]),
]

OPENINGS = [
    "This article explains how to {task}.", "Here is how to {task}.", "Follow these steps to {task}.",
    "Customers often ask how to {task}. It takes a few minutes.", "Need to {task}? This guide walks through it.",
]
CLOSINGS = [
    "If the problem continues, contact Lumora support from Help in the {app}.", "Still stuck? Open Help in the {app} and start a chat with support.",
    "For more help, visit the Lumora community forum.", "Was this article helpful? Let us know from the Help screen.",
    "Lumora support is available every day from 8 a.m. to 10 p.m.", "",
]
APPLIES = ["Applies to: {hub} with firmware 4.0 or newer.", "Applies to: every Lumora hub.", "Applies to: {app} for iOS and Android.", ""]


def _task(title: str) -> str:
    return title[0].lower() + title[1:]


def article(topic, rng: random.Random) -> dict:
    title, intro, steps, tips = topic
    names = {"hub": rng.choice(PRODUCTS), "bulb": rng.choice(BULBS), "app": APP}
    chosen = steps if rng.random() < 0.5 else steps[: max(3, len(steps) - rng.randint(0, 2))]
    lines = [rng.choice(OPENINGS).format(task=_task(title.format(**names))), intro.format(**names), ""]
    lines += [f"{i}. {step.format(**names)}" for i, step in enumerate(chosen, 1)]
    picked_tips = rng.sample(tips, rng.randint(1, len(tips)))
    lines += [""] + [f"Tip: {tip.format(**names)}" for tip in picked_tips]
    ending = [rng.choice(APPLIES).format(**names), rng.choice(CLOSINGS).format(**names)]
    lines += [""] + [line for line in ending if line]
    return {"title": title.format(**names), "text": f"{title.format(**names)}\n\n" + "\n".join(lines).strip()}


def main() -> None:
    rng = random.Random(2026)
    seen, docs = set(), []
    while len(docs) < 300:
        doc = article(TOPICS[len(docs) % len(TOPICS)], rng)
        if doc["text"] not in seen:
            seen.add(doc["text"])
            docs.append(doc)
    target = Path("src/tunesmith/examples/lumora_support.jsonl")
    target.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    print(f"wrote {len(docs)} articles to {target}")


if __name__ == "__main__":
    main()
